"""Jobs: each run of a pipeline step (mix, store) and how it ended — what to look at when one fails."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from callrec.api.deps import (
    Principal,
    ReadDep,
    ServiceDep,
    decode_cursor,
    domain_names,
    encode_cursor,
    is_id,
    scope,
)
from callrec.api.schemas import JobOut, JobPage
from callrec.db.schema import Job
from callrec.errors import ServiceError

router = APIRouter(tags=["jobs"])
# job ids are 32-bit integers on every database
MAX_JOB_ID = 2**31 - 1


def _job_json(job: Job, names: dict[int, str]) -> dict[str, Any]:
    return {
        "id": job.id,
        "domain": names.get(job.domain_id) if job.domain_id is not None else None,
        "recording_id": job.recording_id,
        "kind": job.kind,
        "state": job.state,
        "attempt": job.attempt,
        "error": job.error,
        "worker": job.worker,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "next_attempt_at": job.next_attempt_at,
    }


@router.get("/jobs", response_model=JobPage, summary="Jobs, newest first")
def list_jobs(
    service: ServiceDep,
    principal: ReadDep,
    state: Literal["running", "done", "retrying", "failed"] | None = None,
    recording_id: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    query = scope(select(Job), principal, Job.domain_id)
    if state is not None:
        query = query.where(Job.state == state)
    if recording_id is not None:
        if not is_id(recording_id):
            return {"items": [], "next_cursor": None}
        query = query.where(Job.recording_id == recording_id)
    if cursor is not None:
        after = decode_cursor(cursor).get("id")
        if type(after) is not int or not 0 < after <= MAX_JOB_ID:
            raise ServiceError("the cursor is not valid", 400)
        query = query.where(Job.id < after)
    with service.ctx.sessions() as s:
        rows = list(s.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        names = domain_names(s)
        return {
            "items": [_job_json(j, names) for j in rows],
            "next_cursor": encode_cursor({"id": rows[-1].id}) if more else None,
        }


@router.get("/jobs/{job_id}", response_model=JobOut, summary="One job")
def get_job(
    job_id: Annotated[int, Path(ge=1, le=MAX_JOB_ID)], service: ServiceDep, principal: ReadDep
) -> dict[str, Any]:
    with service.ctx.sessions() as s:
        return _job_json(_find(s, job_id, principal), domain_names(s))


def _find(s: Session, job_id: int, principal: Principal) -> Job:
    job = s.get(Job, job_id)
    if job is None or (not principal.admin and job.domain_id != principal.domain_id):
        raise ServiceError(f"no job {job_id}", 404)
    return job
