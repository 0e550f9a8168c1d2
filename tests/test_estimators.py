"""The guidance math against closed forms: divergences, the quadrature references, and every
estimator's Monte Carlo gradient on the 1-D Gaussian problem of the spec."""
import json

import pytest
import torch

from guidance import estimators
from guidance.divergences import DIVERGENCES, get_divergence
from guidance.gaussian import GaussianProblem, MixtureProblem, divergence_gradient, expanded_divergence_gradient
from guidance.verify import main as verify_main
from guidance.verify import monte_carlo, reference

SPEC = GaussianProblem(teacher_var=1.3, gen_scale=0.8, sigma=0.5, theta=0.4)
# Non-linear scores: a two-mode generator with unequal modes (v_q < 2 (a^2 + sigma^2) keeps chi2's moments finite).
MIXTURE = MixtureProblem(teacher_var=1.0, gen_scale=0.5, sigma=0.5, theta=0.3, mode_offset=1.2, mode_weight=0.75)
# v_q < a^2 + sigma^2 in these, so every moment of r is finite (needed for chi2's standard error).
BOUNDED_RATIO = [
    GaussianProblem(teacher_var=0.6, gen_scale=0.7, sigma=0.4, theta=-0.3),
    GaussianProblem(teacher_var=1.0, gen_scale=1.1, sigma=0.3, theta=0.7),
    GaussianProblem(teacher_var=0.5, gen_scale=0.6, sigma=0.6, theta=0.2),
]

# shared/design/guidance-math.md: (dD_f/dtheta, dJ_h/dtheta) at the spec's parameters.
SPEC_TABLE = {
    "rkl": (0.307692, 0.473373), "fkl": (0.449438, 1.009973), "js": (0.169236, 0.276595),
    "chi2": (2.620664, 16.145722), "jkl": (0.757131, 1.483346), "hellinger": (0.177750, 0.312832),
}


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_closed_forms_match_autograd_of_f(name):
    divergence = get_divergence(name)
    r = torch.linspace(0.05, 6.0, 50, dtype=torch.float64, requires_grad=True)
    (df,) = torch.autograd.grad(divergence.f(r).sum(), r, create_graph=True)
    (d2f,) = torch.autograd.grad(df.sum(), r, create_graph=True)
    h = d2f * r**2
    (dh,) = torch.autograd.grad(h.sum(), r, create_graph=True)
    (d2h,) = torch.autograd.grad(dh.sum(), r)
    torch.testing.assert_close(divergence.h(r), h)
    torch.testing.assert_close(divergence.dh(r), dh)
    torch.testing.assert_close(divergence.d2h(r), d2h)
    assert divergence.f(torch.ones(1, dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", sorted(SPEC_TABLE))
def test_quadrature_reference_reproduces_the_spec_table(name):
    di, expanded = SPEC_TABLE[name]
    assert divergence_gradient(SPEC, get_divergence(name)) == pytest.approx(di, abs=2e-6)
    assert expanded_divergence_gradient(SPEC, get_divergence(name)) == pytest.approx(expanded, abs=2e-6)


def cases():
    for index, problem in enumerate([SPEC, *BOUNDED_RATIO[:2]]):
        for estimator in ("uni-instruct", "f-distill"):
            for divergence in sorted(set(DIVERGENCES) - {"chi2"}):
                yield pytest.param(estimator, divergence, problem, 0.5, id=f"{estimator}-{divergence}-set{index}")
        for estimator, alpha_sid in (("vsd", 0.5), ("sds", 0.5), ("sid", 0.5), ("sid", 1.2)):
            yield pytest.param(estimator, "rkl", problem, alpha_sid, id=f"{estimator}-a{alpha_sid}-set{index}")
    for index, problem in enumerate(BOUNDED_RATIO):
        for estimator in ("uni-instruct", "f-distill"):
            yield pytest.param(estimator, "chi2", problem, 0.5, id=f"{estimator}-chi2-bounded{index}")


@pytest.mark.parametrize("estimator, divergence, problem, alpha_sid", list(cases()))
def test_estimator_is_unbiased_on_the_gaussian_problem(estimator, divergence, problem, alpha_sid):
    estimate, stderr = monte_carlo(estimator, problem, divergence, alpha_sid, samples=300_000, seed=7)
    expected = reference(estimator, problem, divergence, alpha_sid)
    assert stderr > 0
    assert abs(estimate - expected) < 4 * stderr, (estimate, stderr, expected)


def test_sid_at_one_half_is_a_scaled_reverse_kl_surrogate():
    problem = BOUNDED_RATIO[0]
    sample = problem.draw(torch.full((1000,), problem.theta, dtype=torch.float64), torch.Generator().manual_seed(0))
    weight = torch.ones(1000, dtype=torch.float64)
    scores = estimators.Scores(problem.teacher_score, problem.fake_score, problem.logit)
    options = estimators.EstimatorOptions(get_divergence("rkl"), estimators.EXACT_RATIO, alpha_sid=0.5)
    loss_sid = estimators.sid(sample, scores, weight, options)
    loss_rkl = estimators.uni_instruct(sample, scores, weight, options)
    assert loss_sid.item() == pytest.approx(problem.sigma**4 / 2 * loss_rkl.item(), rel=1e-10)


@pytest.mark.parametrize("estimator, divergence", [
    *[(e, d) for e in ("uni-instruct", "f-distill") for d in sorted(DIVERGENCES)], ("vsd", "rkl"), ("sds", "rkl"),
    ("sid", "rkl")])
def test_estimator_is_unbiased_with_non_linear_scores(estimator, divergence):
    estimate, stderr = monte_carlo(estimator, MIXTURE, divergence, 0.7, samples=300_000, seed=11)
    expected = reference(estimator, MIXTURE, divergence, 0.7)
    assert abs(estimate - expected) < 4 * stderr, (estimate, stderr, expected)


def conditional_score_variant(problem, divergence: str, variant: str):
    """Uni-Instruct's surrogate with Grad(SIM)'s conditional score dropped or with its sign flipped."""
    div = get_divergence(divergence)

    def loss(sample, weight):
        x_t = sample.x_t
        s_q, s_p = problem.teacher_score(x_t), problem.fake_score(x_t)
        y = s_p - s_q
        h, r_dh = estimators.divergence_weights(div, torch.exp(problem.logit(x_t)), estimators.EXACT_RATIO)
        s_c = sample.conditional_score(x_t)
        wrong = s_p if variant == "dropped" else s_p + s_c
        surrogate = (h - r_dh) * estimators.per_sample(y**2) - 2 * h * estimators.per_sample(y * wrong)
        return (weight * surrogate).mean()

    return loss


@pytest.mark.parametrize("variant", ["dropped", "flipped"])
@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
def test_a_wrong_conditional_score_term_is_caught_for_every_divergence(divergence, variant):
    """The check has power where it matters: with non-linear scores, Uni-Instruct with its conditional-score
    term dropped or flipped is biased for every divergence (with linear ones it was not, for reverse KL)."""
    loss_fn, n = conditional_score_variant(MIXTURE, divergence, variant), 200_000
    theta = torch.full((n,), MIXTURE.theta, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(MIXTURE.draw(theta, torch.Generator().manual_seed(3)), torch.ones(n, dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss, theta)
    per_sample = grad * n
    stderr = per_sample.std().item() / n**0.5
    assert abs(per_sample.mean().item() - reference("uni-instruct", MIXTURE, divergence, 0.5)) > 6 * stderr


def test_ratio_clamps_and_normalisation():
    spec = estimators.RatioSpec()
    ratio = estimators.density_ratio(torch.tensor([-50.0, 0.0, 2.0, 50.0]), spec)
    torch.testing.assert_close(ratio, torch.tensor([0.1, 1.0, torch.e**2, 20.0]))
    h, r_dh = estimators.divergence_weights(get_divergence("fkl"), ratio, estimators.RatioSpec(normalize=True))
    assert h.mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(r_dh, h)  # for fkl, r h'(r) = r = h(r)


def test_a_soft_clamp_keeps_the_ratio_within_the_clamps_and_a_gradient_past_them():
    logit = torch.tensor([-50.0, -3.0, 0.0, 1.0, 4.0, 50.0], requires_grad=True)
    soft = estimators.density_ratio(logit, estimators.RatioSpec(soft_clamp=True))
    hard = estimators.density_ratio(logit, estimators.RatioSpec())
    torch.testing.assert_close(soft[[0, -1]], torch.tensor([0.1, 20.0]))  # the clamps' bounds far out
    assert ((soft >= 0.1 - 1e-6) & (soft <= 20.0 + 1e-5)).all()
    torch.testing.assert_close(soft[2:4], hard[2:4], rtol=0.1, atol=0.0)  # about exp(d) inside
    soft_slope, = torch.autograd.grad(soft.log().sum(), logit)
    assert (soft_slope[1:-1] > 0.01).all() and (soft_slope < 1.0).all()  # at -3 and 4, past the clamps, too
    hard_slope, = torch.autograd.grad(estimators.density_ratio(logit, estimators.RatioSpec()).log().sum(), logit)
    assert hard_slope[[0, 1, 4, 5]].eq(0).all()  # what the hard clamp passes on past its bounds
    unbounded = estimators.RatioSpec(logit_clamp=None, ratio_clamp=None, soft_clamp=True)
    torch.testing.assert_close(estimators.density_ratio(logit, unbounded), logit.exp())


def test_verify_command_prints_one_json_object(capsys):
    verify_main(["--estimator", "f-distill", "--divergence", "fkl", "--samples", "20000", "--seed", "1"])
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"estimate", "stderr", "reference"}
    assert result["reference"] == pytest.approx(SPEC_TABLE["fkl"][0], abs=2e-6)
    assert abs(result["estimate"] - result["reference"]) < 4 * result["stderr"]
