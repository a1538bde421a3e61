"""sttf_perception: event frames -> change mask / token mask (thin node around
edge_vlm.cores.perception.PerceptionCore)."""
