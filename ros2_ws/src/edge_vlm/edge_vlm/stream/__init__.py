"""From EventPackets to frames: frame clock, histograms, decode+bin (FrameBinner), packet
intake."""
