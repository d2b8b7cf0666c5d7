"""Whether a version's logged model declares an input signature: its MLmodel file, read once per artifact location."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path

import yaml

log = logging.getLogger(__name__)


class SignatureReader:
    """Reads ``MLmodel`` next to a storage URI (``file://``, ``s3://``, … what MLflow can download).

    Artifacts do not change once logged, so answers are cached per URI; a read that fails for a
    passing reason (the store is down) answers None and is tried again next time.
    """

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri or None
        self._known: dict[str, bool] = {}
        self._lock = threading.Lock()

    def has_signature(self, storage_uri: str) -> bool | None:
        """True if the MLmodel declares signature inputs, False if it does not (or there is none), None if unknown."""
        with self._lock:
            if storage_uri in self._known:
                return self._known[storage_uri]
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException, RestException

        try:
            with tempfile.TemporaryDirectory(prefix="slipway-signature-") as tmp:
                path = download_artifacts(
                    artifact_uri=f"{storage_uri.rstrip('/')}/MLmodel", dst_path=tmp, tracking_uri=self.tracking_uri
                )
                doc = yaml.safe_load(Path(path).read_text())
        except (RestException, FileNotFoundError) as exc:
            log.info("no MLmodel at %s: no signature (%s)", storage_uri, exc)
            answer = False
        except Exception as exc:
            if isinstance(exc, (MlflowException, OSError)) and ("404" in str(exc) or "No such file" in str(exc)):
                answer = False
            else:
                log.info("could not read the MLmodel at %s (will retry): %s", storage_uri, exc)
                return None
        else:
            signature = (doc or {}).get("signature") if isinstance(doc, dict) else None
            answer = isinstance(signature, dict) and bool(signature.get("inputs"))
        with self._lock:
            self._known[storage_uri] = answer
        return answer
