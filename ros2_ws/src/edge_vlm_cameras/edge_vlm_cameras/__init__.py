"""edge_vlm's live sources: event cameras (iniVation via dv-processing, Prophesee via the
Metavision SDK) publishing EventPackets, and an OpenCV RGB source publishing Images."""
