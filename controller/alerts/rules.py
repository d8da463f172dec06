"""The alert rules of `controller/metrics/rules.yml`, as the controller evaluates them.

Each rule reads one metric family from the same collector `/metrics` serves, so both paths see
the same figures; a test keeps names, severities, `for` durations and summaries in step with the
YAML. Office hours are 07:00-17:00 Monday to Friday in Vietnam (UTC+7, no daylight saving), as
the YAML's `hour(vector(time() + 25200))` says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

VIETNAM = timezone(timedelta(hours=7))
OFFICE_HOURS = (7, 17)  # [start, end) local hour, Monday to Friday

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    metric: str
    test: Callable[[float, float], bool]  # (value, now) -> condition holds
    summary: str  # str.format over the series' labels; Vietnamese / English
    match: Mapping[str, str] = field(default_factory=dict)
    for_s: float = 0.0
    office_hours: bool = False

    def holds(self, labels: Labels, value: float, now: float) -> bool:
        if any(labels.get(k) != v for k, v in self.match.items()):
            return False
        if self.office_hours and not in_office_hours(now):
            return False
        return self.test(value, now)


def in_office_hours(now: float) -> bool:
    local = datetime.fromtimestamp(now, UTC).astimezone(VIETNAM)
    return local.isoweekday() <= 5 and OFFICE_HOURS[0] <= local.hour < OFFICE_HOURS[1]


RULES: tuple[Rule, ...] = (
    Rule("BoxLost", "critical", "tiepdan_box_state", lambda v, now: v == 1,
         "Hộp {device} mất kết nối hơn 10 phút / box {device} lost for more than 10 minutes",
         match={"state": "lost"}, for_s=600, office_hours=True),
    Rule("RecordingBacklog", "warning", "tiepdan_box_recording_backlog_seconds",
         lambda v, now: v > 900,
         "Hộp {device} còn bản ghi chưa lưu trữ quá 15 phút / box {device} holds recordings "
         "not archived for over 15 minutes"),
    Rule("DiskLow", "warning", "tiepdan_box_disk_free_ratio", lambda v, now: v < 0.10,
         "Đĩa của hộp {device} còn dưới 10 % / box {device} has under 10 % disk free"),
    Rule("CampaignHalted", "critical", "tiepdan_campaign_state", lambda v, now: v == 1,
         "Đợt cập nhật {campaign} đã dừng / update campaign {campaign} halted",
         match={"state": "halted"}),
    Rule("CertificateExpiring", "warning", "tiepdan_box_certificate_not_after_seconds",
         lambda v, now: v - now < 30 * 86400,
         "Chứng chỉ của hộp {device} hết hạn trong 30 ngày / box {device}'s certificate "
         "expires within 30 days"),
    Rule("CentralCertificateExpiring", "critical", "tiepdan_certificate_not_after_seconds",
         lambda v, now: v - now < 30 * 86400,
         "Chứng chỉ trung tâm {name} hết hạn trong 30 ngày / central certificate {name} "
         "expires within 30 days"),
    Rule("ClockNotSynchronised", "warning", "tiepdan_box_clock_synced", lambda v, now: v == 0,
         "Đồng hồ của hộp {device} chưa đồng bộ / box {device}'s clock is not synchronised",
         for_s=300),
)
