"""The seed's 10-way digit classifier trained data-parallel over MPI.

    pip install "fastbp[mpi]"
    mpiexec -n 2 python examples/mpi_digits.py

Every rank loads the same data and calls ``fb.fit`` with the communicator; each global batch of
64 rows is shared out over the ranks in blocks of 16 rows and the gradient is summed over them.
With ``deterministic=True`` (the default) the parameters are bit-identical whatever the number
of ranks: run it with ``-n 1`` and ``-n 2`` and compare the printed checksums.
"""

import numpy as np
from mpi4py import MPI

import fastbp as fb

comm = MPI.COMM_WORLD
X, y = fb.datasets.digits()
X_train, X_test, y_train, y_test = fb.datasets.split(X, y, test_size=0.25, seed=0)
net = fb.Sequential(fb.Linear(64, 32), fb.Tanh(), fb.Linear(32, 10), fb.Softmax(), seed=0)
history = fb.fit(net, X_train, y_train, fb.KL(), fb.Adam(lr=0.01), batch_size=64, epochs=30,
                 tol=None, comm=comm, block_rows=16, progress=False)
if comm.Get_rank() == 0:
    accuracy = fb.accuracy_of(net, X_test, y_test, fb.KL())
    print(f"{comm.Get_size()} rank(s): final loss {history.loss[-1]:.6f}, test accuracy "
          f"{accuracy:.3f}, parameter checksum {float(np.sum(net.flat_params)):.17g}")
