import pytest
import torch

# The test models are tiny: one thread is faster than two, and it keeps timings stable when
# something else is using the machine's other core.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def circles_model():
    from equidiff.worlds import circles as toy

    model, info = toy.load_classifier()
    return model, info
