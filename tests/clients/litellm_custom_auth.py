from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    # Teams by key, without LiteLLM's database: sk-legal -> team "legal".
    team = api_key.removeprefix("sk-").removeprefix("Bearer sk-")
    return UserAPIKeyAuth(api_key=api_key, user_id=f"key-owner-{team}", team_id=f"t-{team}", team_alias=team)
