import pytest
import torch

from cifartune.engine.model import SeedNet, count_parameters, layer_table


def test_seed_network_has_the_practical_works_parameter_count():
    assert count_parameters(SeedNet()) == 1_191_170


def test_layer_table_matches_seed_q10():
    rows = {row.name: row for row in layer_table(SeedNet())}
    assert [rows[n].weights for n in ("conv1", "conv2", "conv3", "fc4", "fc5")] == [
        2_432,
        51_264,
        102_464,
        1_025_000,
        10_010,
    ]
    assert rows["conv1"].output_shape == (32, 32, 32)
    assert rows["pool3"].output_shape == (64, 4, 4)
    assert rows["fc5"].output_shape == (10,)


def test_receptive_fields_grow_as_seed_q7_says():
    rows = {row.name: row for row in layer_table(SeedNet())}
    assert rows["conv1"].receptive_field == 5
    assert rows["pool1"].receptive_field == 6
    assert rows["conv2"].receptive_field == 14  # 6 + (5 - 1) * 2
    assert rows["conv3"].receptive_field == 32
    assert rows["fc4"].sees_whole_image and not rows["conv3"].sees_whole_image


@pytest.mark.parametrize(
    ("dropout", "batchnorm", "extra"),
    [(0.0, False, 0), (0.5, False, 0), (0.0, True, 2 * (32 + 64 + 64)), (0.3, True, 320)],
)
def test_options_change_parameters_only_through_batch_norm(dropout, batchnorm, extra):
    model = SeedNet(dropout=dropout, batchnorm=batchnorm)
    assert count_parameters(model) == 1_191_170 + extra
    assert model(torch.zeros(4, 3, 32, 32)).shape == (4, 10)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == (
        3 if batchnorm else 0
    )
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [dropout, dropout]


def test_dropout_is_active_in_training_only():
    model = SeedNet(dropout=0.5)
    x = torch.randn(8, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_crop_size_variant_resizes_the_first_fully_connected_layer():
    model = SeedNet(image_size=28)
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 10)
    rows = {row.name: row for row in layer_table(model)}
    assert rows["pool3"].output_shape == (64, 3, 3)
    assert rows["fc4"].weights == 64 * 3 * 3 * 1000 + 1000
