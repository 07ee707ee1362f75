"""Who is calling, and what they may use: bearer tokens, model permissions, tag filtering."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from .config import Backend, Config, Model, User
from .errors import AuthenticationFailed, ModelNotFound, PermissionDenied, echoed


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated user: the config entry plus its id."""

    user_id: str
    user: User

    @property
    def is_admin(self) -> bool:
        return self.user.is_admin


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Directory:
    """Answers every "who" and "which model" question from the config, without I/O."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # Looking tokens up by their SHA-256 keeps the lookup's timing independent of how
        # much of a guessed token is right; compare_digest then confirms the match.
        self._by_digest = {_digest(u.token): (uid, u) for uid, u in config.users.items()}
        self._by_name: dict[str, str] = {key: key for key in config.models}
        for key, model in config.models.items():
            # The public name wins over a key that happens to be spelled the same.
            self._by_name[model.name] = key

    def authenticate(self, authorization: str | None) -> Caller:
        if not authorization:
            raise AuthenticationFailed(
                "Missing bearer token: send an 'Authorization: Bearer <token>' header."
            )
        scheme, _, token = authorization.strip().partition(" ")
        if "\t" in scheme:  # "Bearer<TAB>token"
            scheme, _, token = scheme.partition("\t")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("The Authorization header must be 'Bearer <token>'.")
        entry = self._by_digest.get(_digest(token))
        if entry is None or not hmac.compare_digest(
            entry[1].token.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass")
        ):
            raise AuthenticationFailed("Invalid API token.")
        user_id, user = entry
        if not user.enabled:
            raise AuthenticationFailed("This API token is disabled.", code="token_disabled")
        return Caller(user_id, user)

    def find_model(self, name: str) -> tuple[str, Model] | None:
        """A model by public name or config key, enabled or not."""
        key = self._by_name.get(name)
        return None if key is None else (key, self.config.models[key])

    def model_key(self, name: str) -> str:
        """The config key of a model named by key or public name, enabled or not."""
        found = self.find_model(name)
        if found is None:
            # Echoed only through JSON encoding (any value is safe), and cut to a sane length.
            raise ModelNotFound(f"Unknown model '{echoed(name)}'.", param="model")
        return found[0]

    def model_for(self, caller: Caller, name: str) -> tuple[str, Model]:
        """The model a caller asked for, checked for existence, state and permission."""
        found = self.find_model(name)
        if found is None or not found[1].enabled:
            raise ModelNotFound(
                f"The model '{echoed(name)}' does not exist or is not available.", param="model"
            )
        key, model = found
        if not self.may_use(caller, key):
            raise PermissionDenied(
                f"Your token is not allowed to use the model '{echoed(name)}'.", param="model"
            )
        return key, model

    def may_use(self, caller: Caller, model_key: str) -> bool:
        allowed = caller.user.allowed_models
        if not allowed:
            return True
        return model_key in allowed or self.config.models[model_key].name in allowed

    def models_for(self, caller: Caller) -> list[tuple[str, Model]]:
        return [
            (key, model)
            for key, model in self.config.models.items()
            if model.enabled and self.may_use(caller, key)
        ]

    def backends_for(self, caller: Caller | None, model: Model) -> list[Backend]:
        """Enabled backends of enabled providers that the caller's tags admit."""
        user_tags = set(caller.user.tags) if caller is not None else set()
        providers = self.config.providers
        return [
            backend
            for backend in model.backends
            if backend.enabled
            and providers[backend.provider].enabled
            and (not user_tags or not backend.tags or not user_tags.isdisjoint(backend.tags))
        ]
