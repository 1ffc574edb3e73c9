"""One data-parallel training run for tests/test_mpi.py, started as
``mpiexec -n N python tests/mpi_job.py CONFIG.json OUT``: every rank writes OUT.rank<r>.json
(what happened) and rank 0 also OUT.npz (the parameters and the loss history)."""

import json
import os
import signal
import sys

import numpy as np


def data(rows=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, 12)).astype(np.float32)
    d = (X[:, :3].sum(axis=1) > 0).astype(np.int64) + (X[:, 3] > 1)
    return X, d


def net(fb, dropout=0.0):
    return fb.Sequential(fb.Linear(12, 16), fb.Tanh(), fb.Dropout(dropout), fb.Linear(16, 3),
                         fb.Softmax(), dtype=np.float32, seed=0)


def main(config_path, out):
    with open(config_path) as f:
        cfg = json.load(f)
    from mpi4py import MPI

    import fastbp as fb

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    X, d = data()
    if cfg.get("fault") == "nan" and rank == 1:
        X = X.copy()
        X[5, 2] = np.nan  # a bad shard on one rank only
    model = net(fb, cfg.get("dropout", 0.0))
    weights = np.random.default_rng(1).uniform(0, 2, X.shape[0]) if cfg.get("weighted") \
        else None
    callbacks = []
    if cfg.get("fault") == "kill" and rank == 1:
        callbacks.append(lambda epoch, h, n: os.kill(os.getpid(), signal.SIGKILL))
    if cfg.get("fault") == "callback_raises" and rank == 1:
        callbacks.append(lambda epoch, h, n: 1 / 0)
    if cfg.get("fault") == "callback_stops" and rank == 0:
        callbacks.append(lambda epoch, h, n: epoch == 1)
    opt = fb.Adam(lr=cfg.get("lr", 0.01)) if cfg.get("adam") else fb.SGD(lr=cfg.get("lr", 0.1),
                                                                             momentum=0.9)
    status = {"rank": rank, "size": comm.Get_size()}
    try:
        h = fb.fit(model, X, d, fb.KL(), opt, batch_size=cfg.get("batch", 64),
                   epochs=cfg.get("epochs", 2), tol=None, progress=False, callbacks=callbacks,
                   comm=comm, deterministic=cfg.get("det", True),
                   block_rows=cfg.get("block", 16), checkpoint=cfg.get("checkpoint"),
                   resume=cfg.get("resume"), seed=3, engine=cfg.get("engine", "auto"),
                   sample_weight=weights)
        status.update(ok=True, loss=h.loss, accuracy=h.accuracy)
    except Exception as e:  # noqa: BLE001 - the test reads what each rank raised
        status.update(ok=False, error=type(e).__name__, message=str(e))
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(status, f)
    if rank == 0 and status["ok"]:
        np.savez(f"{out}.npz", params=model.flat_params, loss=np.array(h.loss))


if __name__ == "__main__":
    main(*sys.argv[1:3])
