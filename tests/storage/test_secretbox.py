"""Secrets at rest: round trip, refusal of tampering and of the wrong key, the key file."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from callrec.config import ConfigError
from callrec.secretbox import SecretBox, is_encrypted, load_or_create_key, new_key

UNDECRYPTABLE = "^a stored secret cannot be decrypted with the configured CALLREC_SECRET_KEY$"


@pytest.mark.parametrize("plain", ["s3-secret/AbC+123=", "", "pässwörd ✓", "x" * 10_000])
def test_round_trip(plain: str) -> None:
    box = SecretBox(new_key())
    token = box.encrypt(plain)
    assert token.startswith("enc:v1:")
    assert plain not in token or plain == ""
    assert box.decrypt(token) == plain


def test_each_encryption_is_different() -> None:
    box = SecretBox(new_key())
    assert box.encrypt("same") != box.encrypt("same")


def test_is_encrypted() -> None:
    box = SecretBox(new_key())
    assert is_encrypted(box.encrypt("x"))
    assert not is_encrypted("plain secret")
    assert not is_encrypted("enc:v2:something")
    assert not is_encrypted("")


def test_the_wrong_key_is_refused() -> None:
    token = SecretBox(new_key()).encrypt("secret")
    with pytest.raises(ConfigError, match=UNDECRYPTABLE):
        SecretBox(new_key()).decrypt(token)


@pytest.mark.parametrize("position", [7, 20, 60, -5, -1])
def test_a_tampered_token_is_refused(position: int) -> None:
    box = SecretBox(new_key())
    token = box.encrypt("secret value")
    chars = list(token)
    chars[position] = "A" if chars[position] != "A" else "B"
    tampered = "".join(chars)
    assert tampered != token
    with pytest.raises(ConfigError, match=UNDECRYPTABLE):
        box.decrypt(tampered)


@pytest.mark.parametrize("token", ["", "plain", "enc:v1:", "enc:v1:not base64 at all", "enc:v2:abc", "enc:v1:ü"])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(ConfigError, match=UNDECRYPTABLE):
        SecretBox(new_key()).decrypt(token)


def test_a_truncated_token_is_refused() -> None:
    box = SecretBox(new_key())
    token = box.encrypt("secret value")
    with pytest.raises(ConfigError, match=UNDECRYPTABLE):
        box.decrypt(token[:-10])


def test_keys_as_str_or_bytes_with_surrounding_space() -> None:
    key = new_key()
    token = SecretBox(key).encrypt("s")
    assert SecretBox(key.encode()).decrypt(token) == "s"
    assert SecretBox(f"  {key}\n").decrypt(token) == "s"
    # interoperable with plain Fernet under the same key
    assert Fernet(key).decrypt(token.removeprefix("enc:v1:").encode()) == b"s"


# "A" * 43 + "=" would be a valid key (32 zero bytes); cut short or with a foreign character it is not
@pytest.mark.parametrize("key", ["", "short", "x" * 44, "A" * 42, "A" * 43 + "!"])
def test_an_invalid_key_is_refused_without_showing_it(key: str) -> None:
    with pytest.raises(ConfigError, match="^CALLREC_SECRET_KEY is not a valid key") as exc:
        SecretBox(key)
    assert not key or key not in str(exc.value)


def test_the_key_never_shows_in_repr() -> None:
    key = new_key()
    assert key not in repr(SecretBox(key))


def test_new_keys_are_fresh_and_valid() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert len(key) == 44
        SecretBox(key)


def test_load_or_create_key_creates_a_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "callrec" / "secret.key"
    old_umask = os.umask(0)
    try:
        key = load_or_create_key(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == key + "\n"
    assert load_or_create_key(path) == key
    SecretBox(key)
    assert os.listdir(path.parent) == ["secret.key"]


def test_load_or_create_key_reads_an_existing_key(tmp_path: Path) -> None:
    key = new_key()
    path = tmp_path / "k"
    path.write_text(f"\n{key}  \n")
    assert load_or_create_key(path) == key


def test_a_key_file_without_a_valid_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("not a key\n")
    with pytest.raises(ConfigError, match=f"^secret key file {path} does not hold a valid key"):
        load_or_create_key(path)
    assert path.read_text() == "not a key\n"


def test_an_unreadable_key_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.mkdir()
    with pytest.raises(ConfigError, match=f"^secret key file {path} cannot be read: Is a directory$"):
        load_or_create_key(path)


def test_a_key_file_that_cannot_be_created_is_a_config_error() -> None:
    # absent, so it is created; but nobody, not even root, may make folders in /proc
    path = Path("/proc/callrec-no-such-folder/secret.key")
    with pytest.raises(ConfigError, match=f"^secret key file {path} cannot be created: "):
        load_or_create_key(path)


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "k"
    barrier = threading.Barrier(16)
    keys: list[str] = []

    def start() -> None:
        barrier.wait()
        keys.append(load_or_create_key(path))

    threads = [threading.Thread(target=start) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 16
    assert set(keys) == {path.read_text().strip()}
    assert os.listdir(tmp_path) == ["k"]
