"""The join token: show it, rotate it (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from corral import tokens
from corral.api.auth import require_admin, server_state
from corral.server.state import ServerState
from corral.store.store import Store

router = APIRouter(prefix="/api/v1/tokens", dependencies=[Depends(require_admin)])

JOIN_SETTING = "join_token"


def issue_join_token(store: Store, ca_fingerprint: str) -> str:
    """Make a new join token, revoking the old one; hosts already joined are unaffected."""
    token = tokens.Token(tokens.JOIN, ca_fingerprint, tokens.new_secret())
    store.add_token(tokens.JOIN, tokens.hash_secret(token.secret), replace=True)
    store.set_setting(JOIN_SETTING, str(token))
    return str(token)


@router.get("/join")
def get_join(state: ServerState = Depends(server_state)) -> dict[str, str]:
    return {"token": state.store.get_setting(JOIN_SETTING) or "", "server": state.public_url,
            "agent_image": state.agent_image}


@router.post("/join/rotate")
def rotate_join(state: ServerState = Depends(server_state)) -> dict[str, str]:
    return {"token": issue_join_token(state.store, state.ca_fingerprint), "server": state.public_url,
            "agent_image": state.agent_image}
