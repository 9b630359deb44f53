import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts with no compiled graphs and zeroed Dynamo counters."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


class ReferenceBundles:
    """The trained reference models exported once per test session (about a minute each on two
    cores), with their serving section: shared by the bundle, serving and Ray tests."""

    def __init__(self, tmp_path_factory):
        self._factory = tmp_path_factory
        self._made = {}

    def get(self, name: str):
        """``(ref, path, fixed, noise)``: the model, the bundle, the call inputs besides latent
        and timestep (both CFG halves of a batch of 3), and the example noise."""
        if name not in self._made:
            import speca_compile
            from speca_compile.bundle.commands import serving_of
            from speca_compile.reference import store
            from tests import helpers

            ref = store.load(name)
            batch = 3
            fixed = {k: v for k, v in ref.make_inputs(batch, 1).items() if k != "labels"}
            noise = helpers.noise_for(ref, batch, 0)
            path = self._factory.mktemp(name) / "bundle"
            speca_compile.export(ref.model, (torch.cat([noise, noise]),), path,
                                 example_kwargs={"timestep": torch.full((2 * batch,), 0.5), **fixed,
                                                 "return_dict": False}, serving=serving_of(ref))
            self._made[name] = (ref, path, fixed, noise)
        return self._made[name]


@pytest.fixture(scope="session")
def reference_bundles(tmp_path_factory):
    return ReferenceBundles(tmp_path_factory)
