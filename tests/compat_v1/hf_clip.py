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
                         vocab_size=100, max_position_embeddings=16),
        projection_dim=768)
    model = CLIPModel(config).eval()
    folder = os.path.join(str(model_dir), "openai", "clip-vit-large-patch14")
    model.save_pretrained(folder, safe_serialization=True)
    return model
