"""A thin HTTP client for the API, used by `pretrainctl`, benchmarks and tests (HTTP only)."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """A non-2xx answer; `detail` is the API's own explanation."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"{status_code}: {detail}")

    def lines(self) -> list[str]:
        """The detail as lines a person reads: one per problem for a 422."""
        if isinstance(self.detail, list):
            return [_problem_line(p) for p in self.detail]
        return [str(self.detail)]


def _problem_line(problem: Any) -> str:
    if not isinstance(problem, dict):
        return str(problem)
    loc = [str(part) for part in problem.get("loc", []) if part != "body"]
    return f"{'.'.join(loc) or 'body'}: {problem.get('msg', problem)}"


class ApiClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.token = token
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json()

    def submit(self, spec_text: str, *, yaml: bool) -> dict[str, Any]:
        content_type = "application/yaml" if yaml else "application/json"
        return self._call("POST", "/v1/jobs", content=spec_text, headers={"Content-Type": content_type})

    def plan(self, spec_text: str, *, yaml: bool) -> dict[str, Any]:
        content_type = "application/yaml" if yaml else "application/json"
        return self._call("POST", "/v1/plan", content=spec_text, headers={"Content-Type": content_type})

    def attempts(self, job_id: int) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/jobs/{job_id}/attempts")

    def get_job(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def list_jobs(self, **params: Any) -> dict[str, Any]:
        return self._call("GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None})

    def cancel(self, job_id: int, reason: str | None = None) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel", json={"reason": reason})

    def pause(self, job_id: int, reason: str | None = None) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/pause", json={"reason": reason})

    def resume(self, job_id: int, reason: str | None = None) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/resume", json={"reason": reason})

    def logs(self, job_id: int, **params: Any) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/logs", params={k: v for k, v in params.items() if v is not None})

    def events(self, job_id: int, **params: Any) -> dict[str, Any]:
        return self._call(
            "GET", f"/v1/jobs/{job_id}/events", params={k: v for k, v in params.items() if v is not None}
        )

    def metrics(self, job_id: int, **params: Any) -> list[dict[str, Any]]:
        return self._call(
            "GET", f"/v1/jobs/{job_id}/metrics", params={k: v for k, v in params.items() if v is not None}
        )

    def job_data(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/data")

    def goodput(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/goodput")

    def checkpoints(self, job_id: int) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/jobs/{job_id}/checkpoints")

    def evaluations(self, job_id: int) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/jobs/{job_id}/evaluations")["evaluations"]

    def rollback(self, job_id: int, **body: Any) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/rollback", json={k: v for k, v in body.items() if v is not None})

    def scaling_fit(
        self, *, runs: list[dict[str, float]] | None, save: bool, task: str | None = None
    ) -> dict[str, Any]:
        """The scaling fit over `runs`, or over the install's finished jobs when None (their
        scores on benchmark `task` feeding the benchmark predictor)."""
        body: dict[str, Any] = {"runs": runs} if runs is not None else {"jobs": "finished"}
        if task is not None:
            body["task"] = task
        return self._call("POST", "/v1/scaling/fit", json=body, params={"save": "true"} if save else None)

    def create_token(self, *, name: str, role: str) -> dict[str, Any]:
        return self._call("POST", "/v1/tokens", json={"name": name, "role": role})

    def list_tokens(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/tokens")

    def revoke_token(self, token_id: int) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/tokens/{token_id}")
