"""anc_router: event frames -> complexity level -> route decision (thin node around
edge_vlm.cores.router.RouterCore)."""
