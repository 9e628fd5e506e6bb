"""Object storage for recordings and raw tapes: one interface, three backends (local folder, memory, S3).

Every backend raises ``callrec.errors.StorageError`` for every failure and passes the same contract
tests (``tests/storage/test_contract.py``).
"""

from callrec.storage.base import ObjectInfo, Storage, check_key
from callrec.storage.local import LocalStorage
from callrec.storage.memory import MemoryStorage
from callrec.storage.s3 import S3Config, S3Storage

__all__ = ["LocalStorage", "MemoryStorage", "ObjectInfo", "S3Config", "S3Storage", "Storage", "check_key"]
