"""Config merging that turns yacs' exceptions into one-line ``UserError`` messages.

yacs reports an unknown key or a wrong value type with an exception whose message carries the key;
these wrappers name the key, where the value came from, the expected type and the closest existing
key, so a typo in a yaml file or on the command line is fixed in one look.
"""
import difflib
import os
import re
from typing import Any, Dict, List, Sequence

import yaml
from yacs.config import CfgNode as CN

from ..utils.errors import UserError

__all__ = ["merge_from_file_checked", "merge_from_list_checked", "cfg_to_dict", "all_keys"]

_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")
_TYPE_MISMATCH = re.compile(
    r"Type mismatch \(<class '([\w.]+)'> vs\. <class '([\w.]+)'>\) with values \((.*) vs\. (.*)\) "
    r"for config key: (\S+)$",
    re.S,
)
_TYPE_NAMES = {"yacs.config.CfgNode": "a config node", "str": "str", "int": "int", "float": "float", "bool": "bool"}


def all_keys(cfg: CN, prefix: str = "") -> List[str]:
    """Every leaf key of ``cfg`` in dotted form (``OPTIM.LR``)."""
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys.extend(all_keys(v, full + ".") if isinstance(v, CN) else [full])
    return keys


def _lookup(cfg: CN, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _explain(cfg: CN, err: Exception, source: str) -> str:
    """A one-line explanation of a yacs merge error, or "" if it is not one we recognise."""
    msg = str(err.args[0]) if err.args else str(err)
    match = _UNKNOWN_KEY.search(msg)
    if match:
        key = match.group(1)
        close = difflib.get_close_matches(key, all_keys(cfg), n=1, cutoff=0.5)
        hint = (f"; did you mean {close[0]!r}?" if close
                else "; see dassl/config/defaults.py and trainers/config.py for the keys")
        return f"unknown config key {key!r} from {source}{hint}"
    match = _TYPE_MISMATCH.search(msg)
    if match:
        expected, got, _, value, key = match.groups()
        default = _lookup(cfg, key)
        expected = _TYPE_NAMES.get(expected, expected)
        got = _TYPE_NAMES.get(got, got)
        fix = f" (write {value}.0)" if (expected, got) == ("float", "int") else ""
        shown_value = repr(value) if got == "str" else value
        if isinstance(default, CN):
            return f"config key {key!r} from {source} is a group of keys, not a value (got {got} {shown_value})"
        return (f"config key {key!r} from {source} expects {expected} (default {default!r}), "
                f"got {got} {shown_value}{fix}")
    return ""


def merge_from_file_checked(cfg: CN, path: str) -> None:
    """``cfg.merge_from_file(path)``; a missing/invalid file, unknown key or wrong type -> ``UserError``.

    Besides yacs' errors: a folder, an unreadable file and YAML that is not a mapping (a list, a bare string) are
    reported as such, never as a traceback.
    """
    if os.path.isdir(path):
        raise UserError(f"config file {path} is a folder, not a YAML file; pass the path of a .yaml file")
    try:
        with open(path, "r") as f:
            content = yaml.safe_load(f)
        if content is not None and not isinstance(content, dict):
            raise UserError(f"config file {path} holds a YAML {type(content).__name__}, not a mapping of config keys "
                            "(KEY: value lines, e.g. 'OPTIM: {LR: 0.002}')")
        cfg.merge_from_file(path)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        first_line = str(e).strip().splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML ({first_line})") from None
    except OSError as e:  # e.g. no read permission
        raise UserError(f"cannot read config file {path} ({e.strerror})") from None
    except (KeyError, ValueError, AssertionError) as e:
        explanation = _explain(cfg, e, path)
        if not explanation:
            raise
        raise UserError(explanation) from None


def merge_from_list_checked(cfg: CN, opts: Sequence[str], source: str = "the command line") -> None:
    """``cfg.merge_from_list(opts)`` (``[KEY, VALUE, ...]``); odd length, unknown key or wrong type -> ``UserError``."""
    if len(opts) % 2 != 0:
        raise UserError(f"options from {source} must be KEY VALUE pairs, got an odd number of items: {' '.join(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        explanation = _explain(cfg, e, source)
        if not explanation:
            raise
        raise UserError(explanation) from None


def cfg_to_dict(cfg: CN) -> Dict[str, Any]:
    """``cfg`` as plain nested dicts (tuples become lists), e.g. for JSON."""

    def convert(value: Any) -> Any:
        if isinstance(value, CN):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return convert(cfg)
