"""Models in and out of diffusers and the Hugging Face Hub (docs/diffusers-and-hub.md).

    diffusers_unet.py      ddpmkit's U-Net <-> UNet2DModel: config and tensor names (pure mapping)
    diffusers_schedule.py  diffusion and sample settings <-> a scheduler config (pure mapping)
    layout.py              where a diffusers folder keeps the model, its scheduler and weights
    hub.py                 fetching a Hub id into the Hub's cache (optional huggingface_hub)
    export.py              `ddpmkit export`: a run -> a DDPMPipeline folder
    importer.py            `ddpmkit import`: a DDPMPipeline folder or Hub id -> a run

diffusers itself is never imported: files are read and written with safetensors and json.
"""
