"""Would a validation-scored peak ladder see the overfitting? The probe's own bursts, scored on
the validation set: 40 steps (a 10-step linear ramp, then the peak) from the pretrained weights
on the task's training batches, at peaks around the probe's, for seeds 0 and 1; the validation
loss after the burst and after the full run's first 40 steps are the same thing here, since 40
batches are less than one pass (62 batches). Run from this folder:
python burst_val.py"""

import torch
from finetune_task import VAL, make_model, train_data
from torch import nn

torch.set_num_threads(1)


def val_loss(model: nn.Module) -> float:
    with torch.no_grad():
        return sum(float(nn.functional.cross_entropy(model(x), y)) for x, y in VAL) / len(VAL)


print("seed  peak      train_tail  val_after_40")
for seed in (0, 1):
    data = [batch for _, batch in zip(range(40), train_data(seed), strict=False)]
    for peak in (2.4e-4, 7.5e-4, 2.4e-3, 7.5e-3, 2.4e-2):
        torch.manual_seed(seed)
        model = make_model(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=0.01)
        losses = []
        for step, (x, y) in enumerate(data):
            for group in opt.param_groups:
                group["lr"] = peak * min(1.0, (step + 1) / 10)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        tail = sum(losses[-10:]) / 10
        print(f"{seed:<5} {peak:<9.2g} {tail:<11.4f} {val_loss(model):.4f}")
