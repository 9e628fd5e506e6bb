"""(being built)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
# the public pages and audio under /r/{token}: no API key
public_router = APIRouter()
