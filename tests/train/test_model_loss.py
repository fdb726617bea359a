import numpy as np
import torch
import torch.nn.functional as F

from extract import load_teacher
from train.loss import distill_loss
from train.model import Student, count_parameters, init_from_teacher, student_config, weight_groups


def test_student_from_hubert_base_has_the_published_parameter_count():
    from transformers import HubertConfig

    student = Student(student_config(HubertConfig().to_dict()), n_targets=3)
    assert count_parameters(student.encoder) == 23_491_200
    assert 3_000_000 < count_parameters(student.heads) < 4_000_000  # "about 3.5M more with them"
    assert student.encoder.config.num_hidden_layers == 2 and not student.encoder.config.feat_proj_layer_norm


def test_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    loss, l1, cos = distill_loss(pred, target, mask)
    # by hand, only the 8 real frames
    p = torch.cat([pred[0], pred[1, :, :3]], dim=1)
    t = torch.cat([target[0], target[1, :, :3]], dim=1)
    expected = (p - t).abs().mean() + (-F.logsigmoid(F.cosine_similarity(p, t, dim=-1))).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(l1, (p - t).abs().mean((1, 2)), atol=1e-6)
    assert torch.allclose(cos, F.cosine_similarity(p, t, dim=-1).mean(1), atol=1e-6)
    # padded frames do not matter at all
    pred2 = pred.clone()
    pred2[1, :, 3:] = 1e3
    assert torch.allclose(distill_loss(pred2, target, mask)[0], loss)


def test_init_copies_teacher_parts_but_not_the_encoder_layer_norm(tiny_teacher):
    teacher = load_teacher(tiny_teacher, device="cpu")
    student = Student(student_config(teacher.config.to_dict()), 2)
    copied, fresh, _ = init_from_teacher(student, teacher.model)
    assert copied == ["CNN", "feature projection", "positional conv", "layer 1", "layer 2"] and not fresh  # REFERENCE.md
    t, s, groups = teacher.model.state_dict(), student.encoder.state_dict(), weight_groups(student.encoder)
    assert all(torch.equal(s[n], t[n]) for g in copied for n in groups[g])
    assert not any(n.startswith("encoder.layer_norm") for g in groups.values() for n in g)


def test_padded_student_batch_equals_each_alone(tiny_teacher):
    teacher = load_teacher(tiny_teacher, device="cpu")
    student = Student(student_config(teacher.config.to_dict()), 2).eval()
    rng = np.random.default_rng(0)
    waves = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)) for n in (9000, 4001, 6400)]
    batch = torch.zeros(3, 9000)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with torch.no_grad():
        out = student(batch, torch.tensor([len(w) for w in waves]))
        for i, w in enumerate(waves):
            alone = student(w[None], torch.tensor([len(w)]))
            assert torch.allclose(out[i, :, : alone.shape[2]], alone[0], atol=1e-4)


def test_cnn_gradient_is_scaled_by_feature_grad_mult(tiny_teacher):
    teacher = load_teacher(tiny_teacher, device="cpu")
    grads = {}
    for mult in (1.0, 0.1):
        torch.manual_seed(0)
        student = Student(student_config(teacher.config.to_dict(), dropout=0.0), 2, feature_grad_mult=mult).train()
        wave = torch.randn(1, 4000)
        student(wave, torch.tensor([4000])).pow(2).mean().backward()
        grads[mult] = (student.encoder.feature_extractor.conv_layers[0].conv.weight.grad.clone(),
                       student.encoder.feature_projection.projection.weight.grad.clone())
    assert torch.allclose(grads[0.1][0], 0.1 * grads[1.0][0], rtol=1e-4, atol=1e-9)  # CNN: scaled
    assert torch.allclose(grads[0.1][1], grads[1.0][1])  # above the CNN: untouched
