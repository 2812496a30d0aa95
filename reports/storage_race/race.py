"""Four processes open one new SQLite study file at once (two creating it, two reading), N rounds;
prints the rounds in which one failed. Usage: python reports/storage_race/race.py 20"""

import multiprocessing as mp
import os
import sys
import time


def opener(path, create, start, q):
    from autowarm.study import _storage

    while time.time() < start:
        pass
    try:
        _storage.open_storage(path, heartbeat_interval=None, create=create)
        q.put("ok")
    except Exception as e:
        q.put(repr(e)[:200])


if __name__ == "__main__":
    os.makedirs("/tmp/autowarm-race", exist_ok=True)
    fails = 0
    ctx = mp.get_context("fork")

    for i in range(int(sys.argv[1])):
        p = f"/tmp/autowarm-race/db{i}.db"
        if os.path.exists(p):
            os.remove(p)
        q = ctx.Queue()
        start = time.time() + 0.3
        ps = [
            ctx.Process(target=opener, args=(p, c, start, q)) for c in (True, False, True, False)
        ]
        [x.start() for x in ps]
        [x.join() for x in ps]
        res = [q.get() for _ in ps]
        bad = [r for r in res if r != "ok"]
        if bad:
            fails += 1
            print(i, bad[:1])
    print("fails", fails)
