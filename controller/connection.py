"""One connection API over SQLite and PostgreSQL, so every store writes its SQL once.

Stores write `?` placeholders and SQL both engines read (`INSERT ... ON CONFLICT`, `RETURNING`,
`rowid` only where PostgreSQL's table has one explicitly, `"user"` quoted), and read rows by
name or position; what still differs sits here: placeholders
(`%s` for psycopg), transactions (`BEGIN IMMEDIATE` against psycopg's transaction block), the
two-argument extremes (`max(a, b)` against `GREATEST`), the driver's integrity error and the
SQLite PRAGMAs. Not an ORM: the SQL stays the stores' own, in plain sight.

PostgreSQL goes through psycopg 3 (PyPI `psycopg[binary]`, the `postgresql` extra), imported
only when a `postgresql://` URL is opened, so a controller on SQLite needs nothing more.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tiepdan.errors import BadInput, Unavailable

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

Dialect = Literal["sqlite", "postgresql"]
POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


class Cursor(Protocol):
    """What `execute` returns: sqlite3's cursor, or psycopg's with `Row`s."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Row(tuple[Any, ...]):
    """A PostgreSQL row that reads like `sqlite3.Row`: by position, by column name, `keys()`,
    `dict(row)`, and unpacking into a dataclass."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def is_postgresql(target: Path | str) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRESQL_SCHEMES)


def check_url(url: str) -> str:
    """`database.url`: empty (the SQLite file in data_dir) or a libpq `postgresql://` URL."""
    if url and not url.startswith(POSTGRESQL_SCHEMES):
        raise ValueError("database.url must be empty (SQLite in controller.data_dir) or a "
                         "postgresql:// URL")
    return url


def redacted(url: str) -> str:
    """The URL for logs and messages, without its password."""
    scheme, sep, rest = url.partition("://")
    auth, at, place = rest.rpartition("@")
    if not at or ":" not in auth:
        return url
    return f"{scheme}{sep}{auth.split(':', 1)[0]}:***@{place}"


class Connection:
    """The calls every store makes; `SqliteConnection` and `PostgresConnection` implement it."""

    dialect: Dialect
    greatest: str  # the two-argument maximum: SQLite's max(a, b), PostgreSQL's GREATEST
    least: str
    IntegrityError: type[Exception]  # what a broken constraint or append-only trigger raises

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        raise NotImplementedError

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractContextManager[Connection]:
        raise NotImplementedError

    def stream(self, sql: str) -> Iterator[Any]:
        """The rows of a large query a batch at a time, never all in memory at once."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SqliteConnection(Connection):
    dialect: Dialect = "sqlite"
    greatest = "max"
    least = "min"
    IntegrityError = sqlite3.IntegrityError

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False, synchronous: str = "NORMAL",
             foreign_keys: bool = True) -> SqliteConnection:
        """Autocommit (explicit transactions only), WAL so readers never wait for the writer."""
        if readonly:
            raw = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                  check_same_thread=False)
        else:
            raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        raw.row_factory = sqlite3.Row
        conn = cls(raw)
        if readonly:
            return conn
        for pragma in ("journal_mode=WAL", f"synchronous={synchronous}",
                       f"foreign_keys={'ON' if foreign_keys else 'OFF'}", "busy_timeout=5000"):
            conn.raw.execute(f"PRAGMA {pragma}")
        return conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        self.raw.executemany(sql, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """`BEGIN IMMEDIATE`: take the write lock at once, so two writers never deadlock."""
        self.raw.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.raw.execute("ROLLBACK")
            raise
        self.raw.execute("COMMIT")

    def stream(self, sql: str) -> Iterator[Any]:
        yield from self.raw.execute(sql)  # sqlite3 steps through the result as it is read

    def close(self) -> None:
        self.raw.close()


@functools.lru_cache(maxsize=1024)  # the stores' statements are few and fixed
def postgresql_sql(sql: str) -> str:
    """`?` placeholders to psycopg's `%s` (and a literal `%` to `%%`), outside quoted text."""
    out: list[str] = []
    quote = ""
    for char in sql:
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "?":
            out.append("%s")
            continue
        if char == "%":
            out.append("%%")
            continue
        out.append(char)
    return "".join(out)


def _row_factory(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], Row]:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, names)


class PostgresConnection(Connection):
    """One psycopg connection. Should the server restart or the network cut it, the statement
    that meets the cut fails (its caller sees the error: nothing is retried behind its back)
    and the next one, outside a transaction, opens a fresh connection."""

    dialect: Dialect = "postgresql"
    greatest = "GREATEST"
    least = "LEAST"

    def __init__(self, raw: psycopg.Connection[Row], url: str, readonly: bool = False,
                 schema: str = "") -> None:
        import psycopg

        self._raw = raw
        self.url = url
        self.readonly = readonly
        self.schema = schema
        self.IntegrityError = psycopg.IntegrityError
        self._streams = 0
        self._depth = 0  # open transaction blocks: never reconnect inside one
        self._closed = False
        self.reconnects = 0

    @staticmethod
    def _connect(url: str, readonly: bool, schema: str = "", connect_timeout: float = 10.0
                 ) -> psycopg.Connection[Row]:
        """`schema`: the tables live in that schema (created if missing), not in `public`."""
        try:
            import psycopg
        except ImportError:
            raise Unavailable("database.url names PostgreSQL but psycopg is not installed "
                              "(pip install 'tiepdan[postgresql]')") from None
        options = [*(["-c default_transaction_read_only=on"] if readonly else []),
                   *([f"-c search_path={schema}"] if schema else [])]
        try:
            raw = psycopg.connect(url, autocommit=True, row_factory=_row_factory,
                                  connect_timeout=max(1, int(connect_timeout)),
                                  options=" ".join(options) or None)
            if schema and not readonly:
                raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'.encode())
            return raw
        except psycopg.OperationalError as exc:
            raise Unavailable(f"cannot connect to PostgreSQL at {redacted(url)}: "
                              f"{str(exc).strip()}") from None
        except psycopg.ProgrammingError as exc:
            raise BadInput(f"database.url {redacted(url)}: {exc}") from None

    @classmethod
    def open(cls, url: str, *, readonly: bool = False, schema: str = "",
             connect_timeout: float = 10.0) -> PostgresConnection:
        """Autocommit like the SQLite side; statements repeated often are prepared by psycopg."""
        return cls(cls._connect(url, readonly, schema, connect_timeout), url, readonly, schema)

    @property
    def raw(self) -> psycopg.Connection[Row]:
        """The live connection: a fresh one if the last was cut (outside a transaction)."""
        if (self._raw.broken or self._raw.closed) and not self._closed and not self._depth:
            log.warning("db_reconnect dialect=postgresql url=%s", redacted(self.url))
            self._raw = self._connect(self.url, self.readonly, self.schema)
            self.reconnects += 1
        return self._raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if not params:  # without parameters psycopg sends the text as it is (`%` too)
            return self.raw.execute(sql)
        return self.raw.execute(postgresql_sql(sql), params)

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(postgresql_sql(sql), params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.raw.transaction():
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1

    def stream(self, sql: str) -> Iterator[Any]:
        """A server-side cursor (it lives in a transaction): psycopg's ordinary one would
        fetch the whole result first."""
        self._streams += 1
        with self.transaction(), self.raw.cursor(name=f"stream_{self._streams}") as cursor:
            cursor.itersize = 2000
            cursor.execute(sql)
            yield from cursor

    def close(self) -> None:
        self._closed = True
        self._raw.close()


def driver_errors() -> tuple[type[Exception], ...]:
    """What either driver raises for a database problem, for code that reads both."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def connect(target: Path | str, *, readonly: bool = False, schema: str = "") -> Connection:
    """A `postgresql://` URL opens PostgreSQL (its tables in `schema`, default `public`); a
    path opens (or creates) that SQLite file."""
    if is_postgresql(target):
        return PostgresConnection.open(str(target), readonly=readonly, schema=schema)
    return SqliteConnection.open(Path(target), readonly=readonly)
