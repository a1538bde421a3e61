"""vlm_captioner: token memory + captioning model -> captions and compute cost (thin node
around edge_vlm.cores.captioner.CaptionerCore)."""
