import os
import subprocess
import sys

import torch

import train as T
from config import load_config


def test_two_gloo_ranks_match_one_process_with_the_global_batch(tiny, tmp_path):
    # fp32: under bf16 autocast (train.amp=auto on CPUs with native bf16) two half-batches round differently
    # from one whole batch, so the runs drift apart by ~1e-2 in two epochs; the claim here is the maths.
    common = tiny("model.dropout=0", "data.synthetic_size=400", "train.epochs=2", "data.crop_padding=2",
                  "data.flip=true", "train.amp=off")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "train.py", *common, "data.batch_size=16", f"run_dir={tmp_path / 'two'}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run (OMP_NUM_THREADS=1), so reductions sum in the same order
    try:  # the one-process run, while torchrun starts
        T.train(load_config(None, [*common, "data.batch_size=32", f"run_dir={tmp_path / 'one'}"]))
    finally:
        torch.set_num_threads(threads)
    out, err = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, err[-3000:]
    assert out.count('"run_dir"') == 1  # only rank 0 reports (and checkpoints)
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 2 * (320 // 32)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5)
    assert abs(a["history"][-1]["train_loss"] - b["history"][-1]["train_loss"]) < 1e-4
