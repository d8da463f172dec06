"""The SD card's first-boot folder: what a box needs to enroll, and nothing it could misuse.

Written onto the boot partition (FAT, readable from any laptop) as `<boot>/tiepdan/`:
`provision.toml` (device, broker address, enrollment URL), `ca.pem` (to check the controller and
the broker by) and `claim.token` (single use; the box deletes it once enrolled). No key is ever
written here: the box makes its own. The folder is read back before returning, with the box's
own reader, so a card the box would refuse never leaves the technician's hands.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import tomli_w

from tiepdan.firmware.core.durable import write_atomic
from tiepdan.firmware.protocol.firstboot import (
    CA_FILE,
    FOLDER,
    PROVISION_FILE,
    TOKEN_FILE,
    Provision,
    read_provision,
)

README = """\
tiepdan - cấu hình khởi động lần đầu / first-boot provisioning

Vietnamese: Thư mục này do công cụ tiepdan-provision ghi. Khi khởi động lần đầu, thiết bị tự tạo
khóa riêng, đăng ký với máy chủ trung tâm bằng mã dùng một lần trong claim.token, rồi xóa mã đó.
Không sửa hoặc sao chép các tệp này sang thiết bị khác.

English: written by tiepdan-provision. On first boot the box creates its own keys, enrolls with
the central controller using the single-use code in claim.token, then deletes it. Do not edit
these files or copy them to another box.

device: {device}
hall: {hall}
commune: {commune}
"""


def write_boot_folder(boot: Path, provision: Provision, ca_pem: bytes, token: str) -> Path:
    folder = boot / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    header = "# written by tiepdan-provision new-box; read once by tiepdan-enroll\n"
    device = provision.device
    files = {
        PROVISION_FILE: (header + tomli_w.dumps(msgspec.to_builtins(provision))).encode(),
        CA_FILE: ca_pem,
        TOKEN_FILE: f"{token}\n".encode(),
        "README.txt": README.format(device=device.id, hall=device.name,
                                    commune=device.commune).encode(),
    }
    for name, data in files.items():
        write_atomic(folder / name, data, 0o600)
    read_provision(folder)
    return folder
