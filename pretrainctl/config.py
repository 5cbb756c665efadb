"""What the client reads from the environment: where the API is and how to sign in to it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    """The client's share of the `PRETRAIN_` variables (the server reads the same names)."""

    # As the server's: an error never prints the values it was given (the API token).
    model_config = SettingsConfigDict(env_prefix="PRETRAIN_", extra="ignore", hide_input_in_errors=True)

    api_url: str = Field("http://127.0.0.1:8000", description="Where `pretrainctl` finds the API.")
    api_token: SecretStr | None = Field(None, description="Bearer token `pretrainctl` sends.")
    environment: Literal["development", "production"] = Field(
        "production", description="In development, a local server's generated admin token is used."
    )
    state_dir: Path = Field(Path(".pretrain"), description="Where a local server keeps its state.")

    @property
    def generated_admin_token_path(self) -> Path:
        """Where a development server writes the admin token it made up for itself."""
        return self.state_dir / "admin-token"

    def token(self) -> str | None:
        """The token to send: the configured one, else a local development server's own."""
        if self.api_token is not None:
            return self.api_token.get_secret_value()
        generated = self.generated_admin_token_path
        if self.environment == "development" and generated.exists():
            return generated.read_text().strip()
        return None
