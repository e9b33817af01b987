"""3D Gaussian Splatting from COLMAP scenes: a pure-PyTorch tile rasterizer (gsplat CUDA when present),
ADC densification, SteepGS, metrics and INRIA-layout PLY files."""
