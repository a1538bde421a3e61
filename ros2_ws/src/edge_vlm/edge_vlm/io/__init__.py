"""Event I/O: EventPacket codecs, event file formats, ROS 2 bags (read/write), convert, stats."""
