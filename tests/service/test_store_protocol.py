"""The TaskStore contract, run against every implementation: the JSON file, the in-memory store and the Redis
store (against a real redis-server the tests start).

What the service relies on is exactly these behaviours; a new store is added to ``STORES`` and must pass
them. The JSON store's own promises (atomic files, the lock file, throttled progress writes) are in
test_store.py.
"""
from __future__ import annotations

import threading
import uuid

import pytest

from media_cleaner.service.store.base import TaskNotFound, TaskStore
from media_cleaner.service.store.json_store import JsonTaskStore
from media_cleaner.service.store.memory import MemoryTaskStore
from media_cleaner.service.store.redis_store import RedisTaskStore
from support.live_server import free_port
from support.redis_server import redis_server
from media_cleaner.service.tasks import Task, TaskStatus

STORES = {"json": lambda request, tmp: JsonTaskStore(tmp / "queue_db" / "tasks.json", progress_interval_s=0.0),
          "memory": lambda request, tmp: MemoryTaskStore(),
          # A prefix of its own per test: the tests share one redis-server.
          "redis": lambda request, tmp: RedisTaskStore(request.getfixturevalue("redis_url"), progress_interval_s=0.0,
                                                       prefix=f"t{uuid.uuid4().hex[:8]}:")}


def task(i: int, **fields) -> Task:
    return Task(**{"task_id": f"{i:032x}", "original_filename": f"v{i}.mp4", "epsilon": 0.12,
                   "video_strength": 1.0, "audio_level": "weak", "every_n_frames": 10, **fields})


@pytest.fixture(params=sorted(STORES))
def store(request, tmp_path) -> TaskStore:
    made = STORES[request.param](request, tmp_path)
    made.open()
    yield made
    made.close()


def test_it_implements_every_method_of_the_protocol(store):
    """Each method is the implementation's own (only ``recover``, written once from the others, is shared)."""
    methods = [name for name, value in vars(TaskStore).items() if callable(value) and not name.startswith("_")]
    assert "claim_next" in methods and "transition" in methods
    for name in methods:
        own = getattr(type(store), name) is not getattr(TaskStore, name)
        assert own or name == "recover", f"{type(store).__name__} lacks {name}"


def test_add_get_list_newest_first_with_filters(store):
    for i in range(5):
        store.add(task(i, user_id="alice" if i % 2 else "bob"))
    with pytest.raises(ValueError):
        store.add(task(0))
    assert store.get(f"{3:032x}").original_filename == "v3.mp4"
    page, total = store.list(limit=2)
    assert total == 5 and [t.task_id for t in page] == [f"{4:032x}", f"{3:032x}"]
    alice, total = store.list(user_id="alice")
    assert total == 2 and {t.user_id for t in alice} == {"alice"}
    assert store.counts() == {"pending": 5, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0,
                              "total": 5}
    assert store.count_pending("bob") == 3 and store.ids() == {f"{i:032x}" for i in range(5)}
    with pytest.raises(TaskNotFound):
        store.get("0" * 31 + "f")


def test_claims_are_fifo_and_the_queue_moves_up(store):
    for i in range(3):
        store.add(task(i))
    assert [store.queue_position(f"{i:032x}") for i in range(3)] == [1, 2, 3]
    first = store.claim_next()
    assert first.task_id == f"{0:032x}" and first.status == TaskStatus.processing and first.attempts == 1
    assert [store.queue_position(f"{i:032x}") for i in range(3)] == [None, 1, 2]
    store.claim_next(), store.claim_next()
    assert store.claim_next() is None


def test_transition_is_compare_and_set_and_finishing_calls_the_listeners(store):
    finished = []
    store.on_finished(finished.append)
    store.add(task(1))
    store.claim_next()
    winners = []
    barrier = threading.Barrier(4)

    def cancel():
        barrier.wait()
        winners.append(store.transition(f"{1:032x}", [TaskStatus.pending, TaskStatus.processing],
                                        status=TaskStatus.cancelled))
    threads = [threading.Thread(target=cancel) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(w is not None for w in winners) == 1   # one caller wins, the others see it already done
    assert [t.status for t in finished] == [TaskStatus.cancelled]


def test_a_task_is_claimed_by_its_id_once(store):
    """The distributed queue delivers a task by id: the claim wins once, whatever the messages say."""
    store.add(task(1))
    store.add(task(2))
    claimed = store.claim(f"{2:032x}")
    assert claimed.status == TaskStatus.processing and claimed.attempts == 1
    assert store.claim(f"{2:032x}") is None and store.claim("0" * 31 + "f") is None
    assert store.queue_position(f"{1:032x}") == 1


def test_the_attempt_fences_a_run_that_lost_its_task(store):
    """A run that lost its task (taken back, claimed again) cannot finish it: its attempt no longer matches."""
    store.add(task(1))
    first = store.claim(f"{1:032x}")
    store.transition(first.task_id, [TaskStatus.processing], attempt=first.attempts, status=TaskStatus.pending)
    second = store.claim(first.task_id)
    assert second.attempts == first.attempts + 1
    assert store.transition(first.task_id, [TaskStatus.processing], attempt=first.attempts,
                            status=TaskStatus.completed) is None
    done = store.transition(first.task_id, [TaskStatus.processing], attempt=second.attempts,
                            status=TaskStatus.completed)
    assert done.status == TaskStatus.completed


def test_progress_is_seen_at_once_and_never_goes_back(store):
    store.add(task(1))
    store.update_progress(f"{1:032x}", 10.0, 30.0)   # not processing yet: ignored
    assert store.get(f"{1:032x}").progress == 0.0
    store.claim_next()
    store.update_progress(f"{1:032x}", 40.0, 12.0)
    store.update_progress(f"{1:032x}", 30.0, 10.0)
    current = store.get(f"{1:032x}")
    assert current.progress == 40.0 and current.eta_s == 10.0


def test_reads_are_copies(store):
    store.add(task(1, media={"frames": 10}))
    read = store.get(f"{1:032x}")
    read.media["frames"] = 0
    assert store.get(f"{1:032x}").media == {"frames": 10}


def test_recovery_after_a_crash(store):
    for i in range(3):
        store.add(task(i))
    for _ in range(3):
        store.claim_next()
    store.update(f"{2:032x}", attempts=3)
    changed = store.recover(max_attempts=3)
    assert [t.status for t in changed] == [TaskStatus.pending, TaskStatus.pending, TaskStatus.failed]
    assert "interrupted 3 times" in store.get(f"{2:032x}").error_message
    # Engines in processes of their own: the attempt is given back, the server's crash counted instead.
    store.claim_next()
    (again,) = store.recover(max_attempts=3, charge_crashes=False)
    assert again.status == TaskStatus.pending and again.attempts == 1 and again.server_crashes == 1


def test_delete(store):
    store.add(task(1))
    assert store.delete(f"{1:032x}").task_id == f"{1:032x}"
    with pytest.raises(TaskNotFound):
        store.delete(f"{1:032x}")
    assert store.ids() == set()


def test_a_service_runs_on_the_memory_store(tmp_path):
    """The whole service (API, workers, pipeline) on the second implementation: one upload to completed."""
    from fastapi.testclient import TestClient

    from support import media_factory as mf
    from conftest import make_service, wait_for
    from media_cleaner.api.app import create_app
    service = make_service(tmp_path, store_factory=lambda settings: MemoryTaskStore())
    clip = mf.make_video(tmp_path / "clip.mp4", seconds=1)
    with TestClient(create_app(service=service)) as client, open(clip, "rb") as fh:
        response = client.post("/upload", files={"file": ("clip.mp4", fh, "video/mp4")},
                               data={"audio_level": "none"})
        assert response.status_code == 202, response.text
        done = wait_for(client, response.json()["task_id"])
    assert done["status"] == "completed" and isinstance(service.store, MemoryTaskStore)
    assert not (tmp_path / "queue_db" / "tasks.json").exists()


def test_a_service_runs_on_the_redis_store(tmp_path, redis_url):
    """The whole service on the shared store: an upload completes, and another store object (another machine)
    sees the task, its index entries and its counts."""
    from fastapi.testclient import TestClient

    from conftest import make_service, wait_for
    from media_cleaner.api.app import create_app
    from support import media_factory as mf
    prefix = f"svc{uuid.uuid4().hex[:6]}:"
    service = make_service(tmp_path, store="redis", redis_url=redis_url, redis_prefix=prefix)
    clip = mf.make_video(tmp_path / "clip.mp4", seconds=1)
    with TestClient(create_app(service=service)) as client, open(clip, "rb") as fh:
        response = client.post("/upload", files={"file": ("clip.mp4", fh, "video/mp4")},
                               data={"audio_level": "none", "user_id": "alice"})
        assert response.status_code == 202, response.text
        done = wait_for(client, response.json()["task_id"])
        assert client.get("/tasks", params={"user_id": "alice", "status": "completed"}).json()["total"] == 1
    assert done["status"] == "completed" and isinstance(service.store, RedisTaskStore)
    elsewhere = RedisTaskStore(redis_url, prefix=prefix)   # another machine reading (no open: no lock)
    assert elsewhere.get(done["task_id"]).status == TaskStatus.completed
    assert elsewhere.counts()["completed"] == 1 and not (tmp_path / "queue_db" / "tasks.json").exists()


def test_two_machines_claiming_at_once_never_get_the_same_task(redis_url):
    """Compare-and-set across clients: 4 store objects (4 machines) claim 40 tasks concurrently."""
    prefix = f"race{uuid.uuid4().hex[:6]}:"
    stores = [RedisTaskStore(redis_url, prefix=prefix) for _ in range(4)]   # not opened: no server lock
    for i in range(40):
        stores[0].add(task(i))
    claimed: list[str] = []
    lock = threading.Lock()

    def work(store):
        while (got := store.claim_next()) is not None:
            with lock:
                claimed.append(got.task_id)
    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == [f"{i:032x}" for i in range(40)]   # each exactly once
    assert stores[1].counts()["processing"] == 40 and stores[2].count_pending() == 0


def test_one_server_per_redis_store(redis_url):
    from media_cleaner.service.store.base import StoreError
    prefix = f"lock{uuid.uuid4().hex[:6]}:"
    first = RedisTaskStore(redis_url, prefix=prefix)
    first.open()
    with pytest.raises(StoreError, match="Another Media Cleaner server"):
        RedisTaskStore(redis_url, prefix=prefix).open()
    first.close()   # released at once on a clean stop
    second = RedisTaskStore(redis_url, prefix=prefix)
    second.open()
    second.close()


def test_an_unreachable_redis_is_a_clear_error():
    from media_cleaner.service.store.base import StoreError
    with pytest.raises(StoreError, match="cannot be reached.*MEDIA_CLEANER_REDIS_URL"):
        RedisTaskStore(f"redis://127.0.0.1:{free_port()}/0").open()



def test_shared_stores_take_no_server_lock(redis_url):
    """With the distributed queue many API and worker processes open one store at once."""
    prefix = f"shared{uuid.uuid4().hex[:6]}:"
    first, second = (RedisTaskStore(redis_url, prefix=prefix, shared=True) for _ in range(2))
    first.open()
    second.open()
    first.add(task(1))
    assert second.get(f"{1:032x}").original_filename == "v1.mp4"
    first.close()
    second.close()


def test_a_redis_that_goes_away_is_store_unavailable(tmp_path):
    """Every call says "unavailable" (the API answers 503, the workers wait) instead of a Redis error."""
    from media_cleaner.service.store.base import StoreUnavailable
    with redis_server(tmp_path / "redis") as url:
        store = RedisTaskStore(url, prefix="gone:", shared=True)
        store.open()
        store.add(task(1))
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        store.get(f"{1:032x}")
    with pytest.raises(StoreUnavailable):
        store.claim(f"{1:032x}")
