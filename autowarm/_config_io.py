"""Reading and writing ``ScheduleConfig`` files (JSON and YAML, with a format version).

Loading never executes content: ``json`` and a ``yaml.SafeLoader`` only. Every problem with the
content is a ``ValueError`` whose message names the file, the field and the value.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autowarm._checks import check_known_fields
from autowarm._shapes import Decay, WsdShape

if TYPE_CHECKING:
    from autowarm.schedules import ScheduleConfig

FORMAT_NAME = "autowarm.schedule"
SUGGESTION_FORMAT = "autowarm.suggestion"  # Suggestion.save's files
FORMAT_VERSION = 1
_COMMON = ("peak_lr", "total_steps", "warmup_steps", "decay", "min_lr", "warmup_start_factor")
# The fields of ScheduleConfig that only one decay reads.
SHAPE_FIELDS: dict[Decay, tuple[str, ...]] = {
    Decay.COSINE_WITH_RESTARTS: ("num_cycles",),
    Decay.POLYNOMIAL: ("power",),
    Decay.INVERSE_SQRT: ("timescale",),
    Decay.WARMUP_STABLE_DECAY: ("wsd_decay_fraction", "wsd_decay_shape"),
}
_ALL_FIELDS = _COMMON + tuple(f for fs in SHAPE_FIELDS.values() for f in fs)
_FIELD_OWNERS: dict[str, tuple[Decay, ...]] = {
    f: tuple(d for d, fs in SHAPE_FIELDS.items() if f in fs)
    for f in _ALL_FIELDS
    if f not in _COMMON
}
_REQUIRED = ("peak_lr", "total_steps", "warmup_steps")
_SUFFIXES = (".json", ".yaml", ".yml")


def config_to_dict(cfg: ScheduleConfig) -> dict[str, Any]:
    decay = Decay(cfg.decay)
    out: dict[str, Any] = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    for name in _COMMON + SHAPE_FIELDS.get(decay, ()):
        value = getattr(cfg, name)
        out[name] = value.value if isinstance(value, (Decay, WsdShape)) else value
    return out


def config_from_dict(data: Mapping[str, Any]) -> ScheduleConfig:
    from autowarm.schedules import ScheduleConfig

    if not isinstance(data, Mapping):
        raise ValueError(
            f"a schedule config must be a mapping of field names to values, but got "
            f"{type(data).__name__}: {data!r}"
        )
    fmt = data.get("format", FORMAT_NAME)
    if fmt == SUGGESTION_FORMAT:
        raise ValueError(
            "this is a probe's suggestion (format 'autowarm.suggestion'), not a schedule config: "
            "read it with autowarm.Suggestion.load(path).schedule, or write its schedule "
            "out with `autowarm export SUGGESTION.json -o schedule.yaml`"
        )
    if fmt != FORMAT_NAME:
        raise ValueError(f"format must be {FORMAT_NAME!r}, but got format={fmt!r}")
    check_format_version(data, FORMAT_VERSION)
    fields = {k: v for k, v in data.items() if k not in ("format", "format_version")}
    check_known_fields(fields, _ALL_FIELDS, "schedule config")
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise ValueError(f"missing required field(s) {', '.join(map(repr, missing))}")
    _check_shape_fields(fields)
    return ScheduleConfig(**fields)


def check_format_version(data: Mapping[str, Any], current: int) -> None:
    """Refuse a ``format_version`` that is not an int >= 1, or is newer than ``current`` (a
    file written by a newer autowarm); a mapping without one is read as ``current``."""
    version = data.get("format_version", current)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"format_version must be an int >= 1, but got format_version={version!r}")
    if version > current:
        raise ValueError(
            f"format_version={version} was written by a newer autowarm (this one reads up to "
            f"{current}); upgrade autowarm to read it"
        )


def _check_shape_fields(fields: Mapping[str, Any]) -> None:
    # A shape parameter of another decay would be ignored without a word (and dropped on save).
    from autowarm.schedules import ScheduleConfig

    try:
        decay = Decay(fields.get("decay", ScheduleConfig.__dataclass_fields__["decay"].default))
    except ValueError:
        return  # ScheduleConfig names the bad decay
    used = set(SHAPE_FIELDS.get(decay, ()))
    for name, owners in _FIELD_OWNERS.items():
        if name in fields and name not in used:
            raise ValueError(
                f"field {name!r} applies to decay {' or '.join(repr(d.value) for d in owners)}, "
                f"not to decay {decay.value!r}: remove it, or change decay"
            )


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"path must end in .json, .yaml or .yml, but got path={str(path)!r}")
    return suffix


def save_config(cfg: ScheduleConfig, path: Path) -> Path:
    from autowarm._outputs import check_replaceable, is_schedule_output

    suffix = _suffix(path)
    check_replaceable(path, is_schedule_output, "a schedule config or an autowarm export")
    data = config_to_dict(cfg)
    if suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    atomic_write(path, text)
    return path


def file_in_the_way(path: Path) -> Path | None:
    """The file that stands where one of ``path``'s parent folders should be (its nearest
    existing ancestor, when that is not a folder), or ``None``: what no writer can make."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def special_file(path: Path) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder (``"a
    character device"``, ``"a FIFO"``, ...), following symlinks, or ``None``."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    for test, kind in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return None


# Special files written through as open(path, "w") would (-o /dev/null, -o /dev/stdout, a
# named pipe): never renamed over, which would replace the node itself with a regular file.
_WRITTEN_THROUGH = ("a character device", "a FIFO")


def check_writable(path: Path) -> None:
    """Raise :class:`ValueError` when ``path`` cannot be a file: it is a folder, a block
    device or a socket, or a file stands where one of its parent folders should be (said
    before anything is written). A character device (``/dev/null``) or a FIFO is written
    through, as ``open`` would."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder: pass a file name in it")
    kind = special_file(path)
    if kind is not None and kind not in _WRITTEN_THROUGH:
        raise ValueError(f"{path} is {kind}, not a file: pass a file name")
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise ValueError(f"{path} cannot be written: {blocking} is a file, not a folder")


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` as ``open(path, "w")`` would, but
    atomically, and return ``path``.

    The data goes to a temporary file beside the target, renamed over it, so a crash never
    leaves a half-written file (a config, a suggestion, a report's page). As with ``open``: a
    symlink is followed (the file it points at is replaced and the link stays), an existing
    file keeps its mode, and a new one gets ``0o666`` less the umask (``tempfile.mkstemp``
    would make it ``0o600``).

    A character device (``/dev/null``) or a FIFO is written through instead, as ``open``
    does: renaming over it would replace the device node with a regular file.

    Raises:
        ValueError: ``path`` is a folder, a block device or a socket, or a file stands where
            a parent folder should be.
    """
    check_writable(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if special_file(path) in _WRITTEN_THROUGH:
        with open(path, "wb") as fh:  # /dev/null, /dev/stdout, a named pipe: no file to replace
            fh.write(payload)
        return path
    target = path.resolve()  # the link's target, so the rename replaces that file
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode: int | None = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = None  # new: the kernel applies the umask to os.open's 0o666
    fd, tmp = _create_beside(target)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _create_beside(target: Path) -> tuple[int, Path]:
    # tempfile.mkstemp's exclusive create, but with mode 0o666 so that the umask decides.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name beside {target}")


def storage_file_kind(raw: bytes) -> str | None:
    """What kind of study storage a file's bytes are ("a SQLite database", "an optuna journal
    file"), or ``None``: what people pass by mistake where a suggestion JSON goes."""
    if raw.startswith(b"SQLite format 3\0"):
        return "a SQLite database"
    if raw.startswith(b'{"op_code":'):
        return "an optuna journal file"
    return None


def read_mapping(path: Path) -> Any:
    """Parse a ``.json``/``.yaml`` file into plain data (no code execution)."""
    if path.suffix.lower() not in _SUFFIXES and path.is_file():
        with path.open("rb") as f:
            kind = storage_file_kind(f.read(64))
        if kind is not None:  # a study's storage passed where a schedule file goes
            raise ValueError(
                f"{str(path)!r} is {kind}, a study's storage, not a schedule config: pass it "
                f"as --storage {path} (autowarm export --storage ..., autowarm report "
                "--storage ...)"
            )
    suffix = _suffix(path)
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the text
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text ({exc}); a schedule config is JSON or YAML saved as UTF-8"
        ) from None
    if suffix == ".json":
        try:
            return json.loads(text, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        except DuplicateKeyError as exc:
            raise ValueError(f"{path}: {exc}") from None
        except ValueError as exc:  # a number too long to read (Python's 4300-digit limit)
            raise ValueError(f"{path}: a value cannot be read ({exc})") from None
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader: builds no objects
    except yaml.YAMLError as exc:
        # one line, as every error is: YAML's own message spans several, indented
        raise ValueError(" ".join(f"{path}: not valid YAML ({exc})".split())) from None
    except ValueError as exc:  # a number too long to read (Python's 4300-digit limit)
        raise ValueError(f"{path}: a value cannot be read ({exc})") from None


class DuplicateKeyError(ValueError):
    """A field given twice in a JSON object (:func:`unique_keys`)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook``: a field given twice is an error, not "the
    last one wins"."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"field {key!r} is given twice; keep one")
        out[key] = value
    return out


# YAML 1.1 integers that mean something else than they read: 010 is 8 (octal), 1:40 is 100
# (base 60). YAML 1.2 has neither; a config that silently takes them is a trap.
_YAML11_INT = re.compile(r"^[-+]?(?:0[0-9_]+|[0-9][0-9_]*(?::[0-5]?[0-9])+)$")


@functools.cache
def _yaml_loader() -> type[Any]:
    """PyYAML's ``SafeLoader`` made to read numbers as YAML 1.2 does, and strict on keys.

    PyYAML follows YAML 1.1, which reads ``3e-4`` as the string ``"3e-4"`` (people write LRs
    that way, and a config that rejects them is a trap), ``010`` as 8 and ``1:40`` as 100:
    here ``3e-4`` is a float, and the other two (and base-60 floats, ``1:30.5``) are errors
    that say to write the number in decimal. A key given twice is an error too (YAML lets the
    last one win silently); a merge key (``<<: *defaults``) merges as YAML says, the keys
    written beside it winning.
    Nothing else changes (still no tags that build objects).
    """
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # a merge key (<<: ...): the base class merges, keys given win
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the base class says so
                    break
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"field {key!r} is given twice; keep one", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

        def construct_strict_int(self, node: Any) -> int:
            text = str(self.construct_scalar(node))
            if _YAML11_INT.match(text):
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"{text!r} reads as another number in YAML 1.1 (a leading 0 is octal, a ':' "
                    "is base 60): write the integer in decimal, without leading zeros",
                    node.start_mark,
                )
            return int(self.construct_yaml_int(node))

        def construct_strict_float(self, node: Any) -> float:
            text = str(self.construct_scalar(node))
            if ":" in text:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"{text!r} reads as a base-60 number in YAML 1.1: write the number in decimal",
                    node.start_mark,
                )
            return float(self.construct_yaml_float(node))

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_strict_int)
    Loader.add_constructor("tag:yaml.org,2002:float", Loader.construct_strict_float)

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def load_config(path: Path) -> ScheduleConfig:
    data = read_mapping(path)
    try:
        return config_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
