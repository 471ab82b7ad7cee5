"""Score many sequences and train data-parallel on a Dask cluster with gruxp.

python examples/dask_scaling.py                      # a local 2-worker cluster
python examples/dask_scaling.py tcp://scheduler:8786  # an existing cluster
"""

import sys

import dask.array as da
import distributed
import numpy as np

import gruxp
from gruxp import distributed as gd
from gruxp import losses, optim


def load_shard(i, n):
    """Runs ON a worker: read shard i of n (here: made up; in practice from files or zarr)."""
    rng = np.random.default_rng(i)
    x = rng.standard_normal((256, 30, 8))
    return x, x[:, -3:, :2].sum(axis=(1, 2))[:, None]  # target: a sum over the last steps


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else None
    cluster = None if address else distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")
    with distributed.Client(address or cluster) as client:
        # 1. batch inference: only the batch axis is chunked, each block runs the ordinary forward
        gru = gruxp.GRU(8, 32, batch_first=True, seed=0)
        x = da.random.default_rng(0).standard_normal((20_000, 30, 8), chunks=(2_500, 30, 8), dtype=np.float32)
        out, h_n = gd.predict(gru, x)
        print("predict:", out.shape, out.chunks[0][:3], "mean of h_n:", round(float(h_n.mean().compute()), 5))

        # 2. data-parallel training: shards stay on the workers, the optimizer runs here
        model = gruxp.Sequential(
            gru=gruxp.GRU(8, 32, batch_first=True, seed=0, dtype="float64"),
            last=gruxp.LastStep(batch_first=True),
            head=gruxp.Linear(32, 1, seed=1, dtype="float64"),
        )
        trainer = gd.DataParallel(client, model, losses.mse, optim.Adam(lr=1e-2), clip_norm=1.0)
        trainer.load_shards(load_shard, n=4)
        for _ in range(30):
            record = trainer.step()
            if record["step"] % 10 == 0:
                print(f"step {record['step']}: full-batch loss {record['loss']:.4f}")
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":
    main()
