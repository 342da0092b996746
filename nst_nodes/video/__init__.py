"""Video: clips in and out (io.py), optical flow, warps and reliability masks (flow.py), and the
temporal measures (metrics.py). Pure functions on ComfyUI's IMAGE layout ``[N, H, W, 3]``, 0..1."""
