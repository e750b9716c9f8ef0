"""Which study a command means: SPACE, --study NAME, or the study last run from this folder; and the space file
loaded with its store URLs usable again (a file hpsearch wrote carries them masked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpsearch.core.credentials import STORAGE_ENV, TRACKING_ENV, usable_url
from hpsearch.core.errors import UsageError

if TYPE_CHECKING:
    import optuna

    from hpsearch.spec.spec_types import Spec


def load_usable_spec(path: str, **overrides: Any) -> Spec:
    from hpsearch.spec.study_spec import apply_overrides, load_spec

    spec = load_spec(path)
    # A file hpsearch wrote (an exported best.yaml) carries masked URLs: make them usable again.
    stored = (("storage", spec.study.storage, STORAGE_ENV), ("tracking_uri", spec.tracking.uri, TRACKING_ENV))
    for key, value, env in stored:
        if overrides.get(key) is None and value != usable_url(value, env):
            overrides[key] = usable_url(value, env)
    if any(v is not None for v in overrides.values()):
        spec = apply_overrides(spec, **overrides)
    return spec


def resolve_study(space: str | None, study_name: str | None, storage: str | None,
                  tracking_uri: str | None) -> tuple[optuna.Study, str | None, str]:
    """(study, storage_url, tracking_uri) from SPACE, --study, or the study last run from this folder."""
    uri: str | None
    from hpsearch.core.checks import study_name as check_study_name
    from hpsearch.core.locations import DEFAULT_TRACKING_URI, LAST_RUN_FILE
    from hpsearch.core.record_keys import STUDY_TRACKING_URI
    from hpsearch.storage import last_run, stores

    if space and study_name:
        raise UsageError("--study: give either SPACE or --study, not both")
    if space:
        spec = load_usable_spec(space, storage=storage, tracking_uri=tracking_uri)
        name, storage, uri = spec.study.name, spec.study.storage, spec.tracking.uri
    elif study_name:
        # A shared storage holds studies made by plain Optuna too: their names obey the space file's rule,
        # since each names a folder under studies/.
        name, uri = check_study_name(study_name, "--study"), tracking_uri
        last = last_run.last_run()
        if storage is None and last and last.study_name == study_name:
            storage = usable_url(last.storage, STORAGE_ENV, _file_urls(last.space_file)[0])
    else:
        last = last_run.last_run()
        if last is None:
            raise UsageError("SPACE: no study has been run from this folder yet; give SPACE or --study NAME")
        # .last_run.json keeps masked URLs; the real ones come back from the options, the environment,
        # or the space file that run read.
        name = check_study_name(last.study_name, f"{LAST_RUN_FILE} study_name")
        file_storage, file_uri = _file_urls(last.space_file)
        storage = storage or usable_url(last.storage, STORAGE_ENV, file_storage)
        uri = tracking_uri or usable_url(last.tracking_uri or None, TRACKING_ENV, file_uri)
    study = stores.load_existing_study(name, storage)
    uri = uri or usable_url(study.user_attrs.get(STUDY_TRACKING_URI), TRACKING_ENV) or DEFAULT_TRACKING_URI
    return study, storage, uri


def _file_urls(space: str | None) -> tuple[str | None, str | None]:
    """(storage, tracking URI) as the space file last run says them, if it is still there and reads."""
    from hpsearch.spec.study_spec import load_spec

    if not space:
        return None, None
    try:
        spec = load_spec(space)
    except Exception:  # a file moved or edited since only means it cannot supply a password
        return None, None
    return spec.study.storage, spec.tracking.uri
