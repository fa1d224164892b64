"""The toy world: a few procedurally built 3D Gaussian objects with prompts, renders of them, and a small
text-conditional pixel-space diffusion prior trained on those renders and shipped in `toy/prior/`.

    objects.py   the objects, their prompts and true colours
    data.py      renders through `splatdreamer.render` from generation's camera sampler, cached
    model.py     UNet, tiny CLIP text encoder and tokenizer, scheduler; save/load in the SD layout
    train.py     `ToyTrainConfig` and `train(config)`
    sample.py    DDIM sampling from a prior on its own
    measure.py   silhouette and colour measures against ground truth
"""
