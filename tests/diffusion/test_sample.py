import pytest
import torch

from diffusion.edm import EDMConfig
from diffusion.sample import SampleConfig, edm_sampler, karras_sigmas, run_sampler


def gaussian_denoiser(mu, cov):
    """Exact E[y | y + sigma n = x] for y ~ N(mu, cov): mu + cov (cov + sigma^2 I)^-1 (x - mu)."""
    d = mu.numel()
    eye = torch.eye(d, dtype=cov.dtype)

    def denoise(x, sigma):  # x [B, d, 1, 1], sigma [B]
        flat = x.flatten(1) - mu  # [B, d]
        out = torch.empty_like(flat)
        for s in sigma.unique():
            m = sigma == s
            gain = cov @ torch.linalg.inv(cov + s**2 * eye)  # [d, d]
            out[m] = flat[m] @ gain.T
        return (out + mu).view_as(x)

    return denoise


@pytest.fixture
def gaussian():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.25  # image-like scale (sigma_data 0.5)
    cov = a @ a.T + 0.02 * torch.eye(3, dtype=torch.float64)
    mu = torch.tensor([0.3, -0.5, 0.1], dtype=torch.float64)
    noise = torch.randn(20000, 3, 1, 1, generator=g, dtype=torch.float64)
    return mu, cov, noise


def _stats(x):
    flat = x.flatten(1)
    return flat.mean(0), torch.cov(flat.T)


def test_heun_sampler_reproduces_gaussian_mean_and_covariance(gaussian):
    mu, cov, noise = gaussian
    d = gaussian_denoiser(mu, cov)
    x = edm_sampler(d, noise, karras_sigmas(64, 0.002, 80.0, 7.0).to(torch.float64))
    m, c = _stats(x)
    # statistical error of 20k samples: ~0.005 on the mean, ~0.007 on the largest covariance entry
    assert torch.allclose(m, mu, atol=0.01), (m, mu)
    assert torch.allclose(c, cov, atol=0.015), (c, cov)
    # second order: at 32 steps Heun is far closer than Euler (Alg. 2 without the correction)
    sig = karras_sigmas(32, 0.002, 80.0, 7.0).to(torch.float64)
    err_heun = (_stats(edm_sampler(d, noise, sig))[1] - cov).abs().max()
    err_euler = (_stats(edm_sampler(d, noise, sig, second_order=False))[1] - cov).abs().max()
    assert err_heun < err_euler / 3, (err_heun, err_euler)
    # the deterministic ODE from the same noise gives the same samples
    again = edm_sampler(d, noise[:10], karras_sigmas(64, 0.002, 80.0, 7.0).to(torch.float64))
    assert torch.allclose(again, x[:10])


def test_heun_with_churn_still_reproduces_the_gaussian(gaussian):
    mu, cov, noise = gaussian
    cfg = SampleConfig(sampler="heun", steps=64, s_churn=10.0, s_min=0.05, s_max=50.0, s_noise=1.0)
    x = run_sampler(gaussian_denoiser(mu, cov), noise, cfg, EDMConfig(), torch.Generator().manual_seed(1))
    m, c = _stats(x)
    assert torch.allclose(m, mu, atol=0.03) and torch.allclose(c, cov, atol=0.03)


@pytest.mark.parametrize("sampler,steps,tol", [("diffusers_dpmsolver", 32, 0.03), ("diffusers_euler", 128, 0.03)])
def test_diffusers_edm_schedulers_reproduce_the_gaussian(gaussian, sampler, steps, tol):
    mu, cov, noise = gaussian
    mu, cov = mu.float(), cov.float()
    cfg = SampleConfig(sampler=sampler, steps=steps)
    x = run_sampler(gaussian_denoiser(mu, cov), noise[:8000].float(), cfg, EDMConfig())
    m, c = _stats(x.double())
    assert torch.allclose(m, mu.double(), atol=tol) and torch.allclose(c, cov.double(), atol=tol), (m, c)


def test_karras_sigmas_formula():
    s = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert len(s) == 19 and s[-1] == 0
    assert s[0].item() == pytest.approx(80.0) and s[17].item() == pytest.approx(0.002)
    i = 5
    expect = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert s[i].item() == pytest.approx(expect)
