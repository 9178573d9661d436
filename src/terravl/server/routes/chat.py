"""Talk to an image over HTTP: ``POST /api/v1/chat``, one turn of a conversation kept server-side by session id.

The first turn gives the image (an upload, or an indexed tile's id; a second date as ``image2`` / ``id2``) and gets
a ``session`` id; later turns give the id and the instruction only. Each answer says which task the instruction
was routed to, with what it rests on (regions and boxes for the map, evidence, hits). The work runs in the
service's heavy pool; uploads get the same hardening as every image route.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, File, Form, Request, UploadFile

from terravl.server.deps import MAX_ID, ServiceDep
from terravl.server.chat_sessions import ChatSessions
from terravl.tasks.chat import ChatAnswer

router = APIRouter(tags=["chat"])
_CREATE = threading.Lock()
IMAGE_HELP = "An image (JPEG, PNG, GeoTIFF or WebP, recognised by content) to talk about; or give id."


class ChatResponse(ChatAnswer):
    """One turn's answer (the CLI's ``terravl chat --once --format json``) with the ``session`` id to continue
    the conversation with. Search hits carry their ``index`` and ``thumbnail`` URL; evidence names its source by
    file name only."""

    session: str


def sessions_of(request: Request) -> ChatSessions:
    """The application's session store, made on the first chat request (folder under the service's temporary
    folder; the shipped router, sharing the service's default encoder, loaded on the first turn)."""
    state = request.app.state
    with _CREATE:
        store = getattr(state, "chat_sessions", None)
        if store is None:
            service = state.service
            store = state.chat_sessions = ChatSessions(service.tmp / "chat", router=_router(service))
        return store


def _router(service) -> Any:
    from terravl.tasks.chat import Lazy

    def load():
        from terravl.model_versions import HEADS_ENCODER
        from terravl.router import DEFAULT_ROUTER, load_router

        return load_router(DEFAULT_ROUTER, service.encoder(HEADS_ENCODER))

    return Lazy(load)


@router.post("/api/v1/chat", response_model=ChatResponse,
             responses={404: {"description": "an unknown or expired session (field session), or an unknown tile, "
                                             "index or knowledge base"},
                        413: {"description": "an upload over the pixel limit"}})
async def chat(request: Request, service: ServiceDep,
               instruction: str = Form(..., description="What to do, in plain words: \"caption this\", \"how many "
                                                        "boats are there?\", \"where are they?\", \"how big is "
                                                        "it?\", \"what changed?\" (at most 500 characters)."),
               session: str | None = Form(None, max_length=64, description="The id a previous turn returned; "
                                                                           "leave out to start a conversation."),
               image: UploadFile | None = File(None, description=IMAGE_HELP),
               image2: UploadFile | None = File(None, description="A second date of the same place (after)."),
               id: int | None = Form(None, ge=1, le=MAX_ID, description="Id of an indexed tile; or upload image."),
               id2: int | None = Form(None, ge=1, le=MAX_ID, description="Id of a tile of a second date."),
               index: str | None = Form(None, max_length=200, description="The index the tile ids are from and "
                                                                          "that search uses (default: the first)."),
               kb: str | None = Form(None, max_length=200, description="A served knowledge base for factual "
                                                                       "questions (default: the first, if any).")):
    """One turn of a conversation about an image or a pair of dates: the instruction is routed to a task
    (caption, describe, yesno, question, count, locate, classify, change, search, knowledge, or unknown with a
    reply saying what is possible) and answered by its expert. Follow-ups refer to earlier turns of the session
    ("how big is it?" after a locate: that region's area). New images in a session start its conversation
    afresh. Sessions expire after 30 minutes idle, and the oldest go first when too many are open."""
    from terravl.router.model import MAX_CHARS, check_instruction
    from terravl.validation import check_text

    text = check_text(check_instruction(instruction), "instruction", MAX_CHARS)  # a clear 400 before any work
    sessions = sessions_of(request)
    if session is not None:
        sessions.get(session)  # an unknown or expired session is a 404 before any work
    if id is not None or id2 is not None:
        service.index_name(index)  # an unknown index is a 404 before any work
    if kb is not None:
        service.kb_name(kb)
    result = await service.heavy.run(service.chat, sessions, session, text, (image, image2), (id, id2), index, kb,
                                     request=request)
    return ChatResponse.model_validate(result)
