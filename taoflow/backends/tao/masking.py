"""Key hygiene: where the TAO model key comes from, and masking it (and other secrets) out of everything taoflow emits.

TAO needs its model key on the command line (`-k KEY`). taoflow therefore never logs, raises or returns a raw
command line: every string that leaves the TAO backend (the log file, exception messages, the `command` of a result,
status.json records handed back) goes through `mask_secrets` first. Flows mask what they publish (Prefect results,
ClearML records, reports) with `mask_data(obj, secrets_to_mask(key))`, which also takes whole result objects.
"""

import dataclasses
import os
import re
from pathlib import PurePath

from ...errors import TaoflowError

MASK = "****"

# The model key (`-k`) TAO uses to encrypt .tlt/.etlt files (TAO's samples use e.g. "nvidia_tlt"). It is NOT the
# NGC API key, which only logs docker in to nvcr.io; both are masked when present in the environment.
KEY_ENV = "TAO_MODEL_KEY"
NGC_KEY_ENV = "NGC_API_KEY"

# Environment variables whose values are secrets wherever they show up (ClearML credentials travel to the container
# through the mounts file's Envs, so TAO's output may echo them).
_SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD)", re.IGNORECASE)
_MIN_ENV_SECRET = 8


def resolve_key(value=None, environ=None):
    """The model key: `value` if given (a str, a Prefect Secret-like object or a callable), else $TAO_MODEL_KEY.

    Returns None when neither is set; callers that need a key (TAO 3/4 encrypted models) raise a clear error.
    """
    environ = os.environ if environ is None else environ
    if value is None:
        value = environ.get(KEY_ENV) or None
    elif hasattr(value, "get_secret_value"):  # pydantic SecretStr
        value = value.get_secret_value()
    elif hasattr(value, "get") and not isinstance(value, (str, dict)):  # prefect.blocks.system.Secret
        value = value.get()
    elif callable(value):
        value = value()
    if value is None:
        return None
    value = str(value)
    if not value:
        return None
    if any(c in value for c in "\n\r\0'"):
        # The launcher hands arguments to a shell inside single quotes; these characters cannot cross it intact.
        raise TaoflowError("the TAO model key must not contain quotes, newlines or NUL characters")
    return value


def secret_env_values(environ=None):
    """Values of secret-looking environment variables (the NGC key, ClearML credentials, ...), to be masked.

    Short values are left out: a flag such as SOME_KEY_ENABLED=1 would otherwise mask every "1" in TAO's logs,
    and real credentials are long. The model key itself is always masked, whatever its length.
    """
    environ = os.environ if environ is None else environ
    return [v for k, v in environ.items()
            if (len(v) >= _MIN_ENV_SECRET and _SECRET_NAME.search(k)) or (k == KEY_ENV and v)]


def mask_secrets(text, secrets):
    """`text` with every occurrence of each non-empty secret replaced by ****; longest secrets first so that a
    secret containing another is masked whole."""
    if text is None:
        return None
    text = str(text)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def secrets_to_mask(key=None, environ=None):
    """Everything taoflow masks for a run: the model key (as resolve_key finds it) and the secret-looking
    environment values. Build it once and hand it to mask_secrets / mask_data (flows: before a Prefect result, a
    ClearML record or a report leaves the process)."""
    environ = os.environ if environ is None else environ
    return list(dict.fromkeys(s for s in (resolve_key(key, environ), *secret_env_values(environ)) if s))


def mask_data(value, secrets):
    """mask_secrets applied to every string inside `value`: nested dicts/lists/tuples/sets (status.json records,
    result_dict output), dataclass instances such as the step results (a masked copy) and paths. Other values are
    returned as they are."""
    secrets = [s for s in secrets if s]
    if not secrets:
        return value
    if isinstance(value, str):
        return mask_secrets(value, secrets)
    if isinstance(value, PurePath):
        masked = mask_secrets(str(value), secrets)
        return value if masked == str(value) else type(value)(masked)
    if isinstance(value, dict):
        return {mask_data(k, secrets): mask_data(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(mask_data(v, secrets) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: mask_data(getattr(value, f.name), secrets) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value
