"""An Opacus-private client as the victim: attack its DP-SGD update at several noise levels.

A LeNet is made private with Opacus' ``PrivacyEngine.make_private`` (as a user of Opacus would), handed to
:class:`gradaudit.integrations.opacus.OpacusClient` as the victim, and its FedSGD update of one private image
(clipped to C and noised by Opacus' DPOptimizer) is attacked. For each noise multiplier sigma the table gives
the attack's PSNR / SSIM against the private image and the epsilon (delta = 1e-5) of the shared update from
the project's accountant and from Opacus' RDP and PRV accountants.

    python examples/flower_audit/opacus_victim.py
"""

from __future__ import annotations

import argparse
import math
import time

import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sigmas", default="0,0.001,0.01,0.1,1", help="noise multipliers, comma-separated")
    p.add_argument("--clip", type=float, default=1.0, help="Opacus max_grad_norm C")
    p.add_argument("--image", type=int, default=0, help="index of the private image in the embedded set")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from opacus import PrivacyEngine

    from gradaudit.attacks.registry import build_attack
    from gradaudit.data import load_dataset
    from gradaudit.defenses import DPSGD
    from gradaudit.integrations.opacus import OpacusClient
    from gradaudit.metrics import score_reconstruction
    from gradaudit.models.registry import ModelSpec, build_model
    from gradaudit.threat.observation import DataSpec

    ds = load_dataset("embedded")
    spec = ModelSpec("lenet", ds.num_classes, ds.shape)
    data = DataSpec(ds.name, tuple(ds.mean), tuple(ds.std))
    images, labels = ds.batch([args.image])
    print("| sigma | C | ||update|| | PSNR (dB) | SSIM | label | eps (gradaudit RDP) | eps (Opacus RDP) "
          "| eps (Opacus PRV) | attack s |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for sigma in (float(s) for s in args.sigmas.split(",")):
        torch.manual_seed(args.seed)
        model = build_model(spec)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=1)
        private, _, _ = PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
            noise_multiplier=sigma, max_grad_norm=args.clip, poisson_sampling=False)
        client = OpacusClient(private, spec, data, dp=DPSGD(args.clip, sigma), seed=args.seed)
        obs = client.share(images, labels)  # what the server receives
        norm = float(torch.sqrt(sum(u.pow(2).sum() for u in obs.update.values())))  # clipped g + noise
        # the attack: DLG's L-BFGS on the cosine distance (scale-free, since clipping rescales the gradient)
        attack = build_attack("inverting-gradients", optimizer="lbfgs", lr=1.0, signed=False, schedule="none",
                              regularizers={}, lbfgs_inner_steps=20, iterations=args.iterations, seed=args.seed)
        t0 = time.perf_counter()
        rec = attack.reconstruct(obs)
        seconds = time.perf_counter() - t0
        s = score_reconstruction(rec.images, images, labels, rec.labels)
        eps = obs.extras["opacus_epsilon"]
        fmt = lambda e: "n/a" if e is None else "inf" if math.isinf(e) else f"{e:.3g}"  # noqa: E731
        print(f"| {sigma:g} | {args.clip:g} | {norm:.3g} | {s.mean_psnr:.2f} | {s.mean_ssim:.3f} | {int(rec.labels[0])}/"
              f"{int(labels[0])} | {fmt(obs.extras['dp_epsilon'])} | {fmt(eps['rdp'])} | {fmt(eps['prv'])} "
              f"| {seconds:.1f} |")


if __name__ == "__main__":
    main()
