"""The service's refusals know nothing of HTTP; the API maps each kind to its status in one place."""

from __future__ import annotations

import pytest

from callrec.api.handlers import STATUS, status_of
from callrec.errors import Conflict, Gone, NotFound, Refused, ServiceError


@pytest.mark.parametrize(("error", "status"), [
    (NotFound("no delivery 'x'"), 404), (Conflict("being sent"), 409), (Gone("this link has expired"), 410),
    (Refused("expires_in_s must be between 60 and 600 seconds"), 422),
])  # fmt: skip
def test_each_kind_of_refusal_has_its_status(error: ServiceError, status: int) -> None:
    assert error.status is None, "the service layer gives no HTTP status"
    assert status_of(error) == status


def test_a_status_the_api_gave_wins_and_a_plain_refusal_is_400() -> None:
    assert status_of(ServiceError("the file is larger than the limit", 413)) == 413
    assert status_of(ServiceError("the upload must be multipart/form-data")) == 400


def test_every_kind_is_mapped() -> None:
    assert set(STATUS) == {NotFound, Conflict, Gone, Refused}
    assert all(issubclass(kind, ServiceError) for kind in STATUS)
