"""Google Vertex AI's OpenAI-compatible endpoint, with google-auth bearer tokens.

The URL is the seed's template; ``{region}`` and ``{project_id}`` are filled at
load time from, in order: the ``region``/``project_id`` arguments, the
environment (``GOOGLE_CLOUD_REGION`` or ``GOOGLE_CLOUD_LOCATION``;
``GOOGLE_CLOUD_PROJECT``), and for the project the one the credentials belong
to. An ``api_url`` written out in full in settings is used as is.

Credentials are Google's application default credentials: the service-account
key file named by ``GOOGLE_APPLICATION_CREDENTIALS``, else gcloud's user
credentials or the metadata server. Tokens are refreshed in a worker thread
(never on the event loop) once they are within ``token_refresh_margin_s`` of
expiry; concurrent requests share one refresh. Needs ``pip install inferline[gcp]``.

    engine = GoogleVertexInferenceEngine(ModelParams(model_name="google/gemini-1.5-pro"),
                                         region="us-central1", project_id="my-project")
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import os
import threading
from typing import Any

import aiohttp

from inferline.core.configs import (
    GenerationParams,
    InferenceEngineType,
    ModelParams,
    RemoteParams,
)
from inferline.engines.openai_compat import RemoteInferenceEngine
from inferline.errors import EngineUnavailableError, RetryableEngineError

API_URL = ("https://{region}-aiplatform.googleapis.com/v1beta1/projects/{project_id}"
           "/locations/{region}/endpoints/openapi/chat/completions")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


class GoogleVertexInferenceEngine(RemoteInferenceEngine):
    """Gemini and partner models on Vertex AI, authenticated with google-auth."""

    engine_type = InferenceEngineType.GOOGLE_VERTEX
    default_api_url = API_URL
    token_refresh_margin_s: float = 300.0

    def __init__(self, model_params: ModelParams, *,
                 generation_params: GenerationParams | None = None,
                 remote_params: RemoteParams | None = None, name: str | None = None,
                 session: aiohttp.ClientSession | None = None,
                 region: str | None = None, project_id: str | None = None) -> None:
        super().__init__(model_params, generation_params=generation_params,
                         remote_params=remote_params, name=name, session=session)
        self.region, self.project_id = region, project_id
        self._credentials: Any = None
        self._refresh_lock = threading.Lock()
        self._refreshing: asyncio.Future[None] | None = None

    def preflight(self) -> None:
        if importlib.util.find_spec("google.auth") is None:
            raise EngineUnavailableError(
                "google-auth is not installed; pip install 'inferline[gcp]'", engine=self.name)

    def _load(self) -> None:
        """Find the credentials and fill the URL template (blocking; runs in a thread)."""
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            self._credentials, project = google.auth.default(scopes=SCOPES)
        except DefaultCredentialsError as exc:
            raise EngineUnavailableError(f"no Google credentials found ({exc}); set "
                                         "GOOGLE_APPLICATION_CREDENTIALS",
                                         engine=self.name) from exc
        self.api_url = self._fill_url(project)

    def _fill_url(self, credentials_project: str | None) -> str:
        region = (self.region or os.environ.get("GOOGLE_CLOUD_REGION")
                  or os.environ.get("GOOGLE_CLOUD_LOCATION"))
        project = self.project_id or os.environ.get("GOOGLE_CLOUD_PROJECT") or credentials_project
        if "{region}" in self.api_url and not region:
            raise EngineUnavailableError("Vertex region unknown: set GOOGLE_CLOUD_REGION "
                                         "or pass region=", engine=self.name)
        if "{project_id}" in self.api_url and not project:
            raise EngineUnavailableError("Vertex project unknown: set GOOGLE_CLOUD_PROJECT "
                                         "or pass project_id=", engine=self.name)
        return self.api_url.replace("{region}", region or "").replace("{project_id}", project or "")

    # -- tokens ---------------------------------------------------------------------

    async def _refresh_auth(self) -> None:
        """One refresh in a thread, shared by every request of this loop that needs it."""
        if self._token_fresh():
            return
        task = self._refreshing
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            task = self._refreshing = asyncio.ensure_future(asyncio.to_thread(self._refresh))
        await asyncio.shield(task)

    def _api_key(self) -> str | None:
        """The access token (``_refresh_auth`` has just made sure it is fresh)."""
        return str(self._credentials.token)

    def _token_fresh(self) -> bool:
        creds = self._credentials
        if creds is None or not creds.token:
            return False
        if creds.expiry is None:
            return True
        expiry: dt.datetime = (creds.expiry if creds.expiry.tzinfo
                               else creds.expiry.replace(tzinfo=dt.UTC))
        return (expiry - dt.datetime.now(dt.UTC)).total_seconds() > self.token_refresh_margin_s

    def _refresh(self) -> None:
        import google.auth.transport.requests
        from google.auth.exceptions import RefreshError, TransportError

        with self._refresh_lock:  # another loop's thread may have just refreshed
            if self._token_fresh():
                return
            try:
                self._credentials.refresh(google.auth.transport.requests.Request())
            except (TransportError, RefreshError) as exc:
                if isinstance(exc, RefreshError) and not getattr(exc, "retryable", False):
                    raise EngineUnavailableError(f"Google credentials rejected: {exc}",
                                                 engine=self.name) from exc
                raise RetryableEngineError(f"token refresh failed: {exc}",
                                           engine=self.name) from exc
