"""gradaudit from Python: a client shares a gradient, the server attacks it, we score the result.

Run:  .venv/bin/python examples/python_api.py
"""

import torch

from gradaudit.attacks import build_attack
from gradaudit.data import load_dataset
from gradaudit.metrics import score_reconstruction
from gradaudit.models import ModelSpec, build_model
from gradaudit.threat import Client, DataSpec, ServerKnowledge

data = load_dataset("embedded")                       # 64 offline 32x32 photos, 8 classes
images, labels = data.batch([20])                     # the client's private batch (B=1)

spec = ModelSpec("lenet", data.num_classes, data.shape)
torch.manual_seed(0)
model = build_model(spec)                             # the model the server sent

client = Client(model, spec, DataSpec(data.name, data.mean, data.std),
                knowledge=ServerKnowledge(labels=False))
observation = client.share(images, labels)            # all the server ever sees

attack = build_attack("dlg", iterations=100)          # or GradientMatchingAttack(MatchingConfig(...))
reconstruction = attack.reconstruct(observation)

scores = score_reconstruction(reconstruction.images, images, true_labels=labels,
                              predicted_labels=reconstruction.labels)
print(f"PSNR {scores.mean_psnr:.1f} dB, SSIM {scores.mean_ssim:.3f}, "
      f"labels {reconstruction.labels.tolist()} ({reconstruction.label_source}), "
      f"{reconstruction.seconds:.1f} s")
