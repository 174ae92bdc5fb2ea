"""The gradient penalty's share of PGAN's critic step, timed part by part and profiled by operator.

    python benchmarks/profile_penalty.py [--threads 1] [--resolution 256] [--batch-size 4] [--channels-last]
                                         [--no-fused-scale] [--penalty-subbatch K] [--warmup 1] [--steps 1]
                                         [--json PATH]

One critic step as PGAN.training_step takes it at the last stage (alpha 1): fakes from the generator under
no_grad, then ``WGANGPLoss.discriminator``'s terms, backward, Adam. To attribute time, the loss is split in
two parts whose gradients add up to the loss's own: the Wasserstein and drift terms (critic on reals and
fakes, their backward) and the gradient penalty (critic on the interpolates, the input gradient with
create_graph, and the double backward through it). Each part runs under ``torch.profiler.record_function``
and is timed by the wall clock and by this process's CPU time (less disturbed on a shared machine); the
penalty share is its time over the whole step's. The networks are the
paper-size ones (fmap_base 8192, fmap_max 512) with their default fused scaling.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from synthseg.losses.wgan import WGANGPLoss
from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--no-fused-scale", action="store_true")
    parser.add_argument("--penalty-subbatch", type=int, default=None, help="WGANGPLoss(penalty_subbatch=K)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=1, help="timed (and profiled) steps")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fused, r, b = not args.no_fused_scale, args.resolution, args.batch_size
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    generator = PGANGenerator(resolution=r, fused_scale=fused).to(memory_format=fmt).requires_grad_(False)
    critic = PGANDiscriminator(resolution=r, fused_scale=fused).to(memory_format=fmt)
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
    loss = WGANGPLoss(penalty_subbatch=args.penalty_subbatch)
    reals = (torch.randint(0, 7, (b, 1, r, r)).float() / 3 - 1).contiguous(memory_format=fmt)
    latents, mixing = torch.randn(b, 512), torch.rand(b, 1, 1, 1)

    def step() -> dict[str, float]:
        times: dict[str, float] = {}
        clocks = {"": time.perf_counter, "cpu_": time.process_time}
        start = {k: clock() for k, clock in clocks.items()}
        mark = dict(start)

        def lap(name: str) -> None:
            for k, clock in clocks.items():
                now = clock()
                times[k + name], mark[k] = now - mark[k], now

        with record_function("fakes (generator, no_grad)"), torch.no_grad():
            fakes = generator(latents, r, 1.0).contiguous(memory_format=fmt)
        optimizer.zero_grad(set_to_none=True)
        lap("fakes")
        with record_function("wasserstein + drift (forward, backward)"):
            real_scores, fake_scores = critic(reals).flatten(), critic(fakes).flatten()
            (fake_scores - real_scores + real_scores.square() * loss.drift_weight).mean().backward()
        lap("wasserstein_drift")
        with record_function("penalty (forward, input gradient, double backward)"):
            loss.gradient_penalty(critic, reals, fakes, mixing)[0].mean().backward()
        lap("penalty")
        with record_function("adam"):
            optimizer.step()
        lap("adam")
        for k, clock in clocks.items():
            times[k + "step"] = clock() - start[k]
        return times

    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runs = [step() for _ in range(args.steps)]
    median = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    share, cpu_share = median["penalty"] / median["step"], median["cpu_penalty"] / median["cpu_step"]
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=16)
    print(table)
    layout = "channels_last" if args.channels_last else "contiguous"
    print(
        f"critic step {r}x{r} batch {b}, {args.threads} thread(s), {layout}, "
        f"{'fused' if fused else 'unfused'} scaling, penalty_subbatch {args.penalty_subbatch}: "
        f"step {median['step']:.2f} s = fakes {median['fakes']:.2f} + wasserstein/drift "
        f"{median['wasserstein_drift']:.2f} + penalty {median['penalty']:.2f} + adam {median['adam']:.2f}; "
        f"penalty share {100 * share:.1f} % (wall); in CPU time step {median['cpu_step']:.2f} s, penalty "
        f"{median['cpu_penalty']:.2f} s, share {100 * cpu_share:.1f} %"
    )
    if args.json:
        record: dict[str, Any] = {"settings": vars(args) | {"json": None}, "median_s": median, "runs": runs}
        record |= {"penalty_share": share, "penalty_share_cpu_time": cpu_share}
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
