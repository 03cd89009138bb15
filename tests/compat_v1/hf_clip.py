"""A tiny random Hugging Face CLIP saved as NeMo Curator 1.x's model_dir lays it out."""
import os


def write_hf_clip(model_dir, seed: int = 0):
    """``model_dir/openai/clip-vit-large-patch14`` with a random tiny CLIPModel; returns the model."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32, hidden_act="quick_gelu"),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=100, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        projection_dim=768)
    model = CLIPModel(config).eval()
    folder = os.path.join(str(model_dir), "openai", "clip-vit-large-patch14")
    model.save_pretrained(folder, safe_serialization=True)
    return model


def write_upstream_model_dir(model_dir, aesthetic_pth: str, nsfw_seed: int = 11):
    """Everything NeMo Curator 1.x's image tutorial loads from ``--model-dir``, in its layout:
    a tiny random CLIP (Hugging Face format), the real aesthetic head as safetensors, random NSFW
    weights. Returns the CLIP model."""
    import torch
    from safetensors.torch import save_file
    from test_nsfw import write_nsfw_weights

    clip = write_hf_clip(model_dir)
    aesthetic = os.path.join(str(model_dir), "ttj", "sac-logos-ava1-l14-linearMSE")
    os.makedirs(aesthetic)
    state = torch.load(aesthetic_pth, map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(aesthetic, "model.safetensors"))
    nsfw = os.path.join(str(model_dir), "laion", "clip-autokeras-binary-nsfw")
    os.makedirs(nsfw)
    write_nsfw_weights(os.path.join(nsfw, "clip_autokeras_binary_nsfw.pth"), seed=nsfw_seed)
    return clip
