"""ONNX export: while ``torch.onnx.export`` traces a model (either exporter, TorchScript or dynamo), seqops' ops
run as the ATen ops torch.nn's modules call, which the exporters translate (a layer to ONNX's LSTM / GRU / RNN
op, a cell and attention to their ONNX decompositions). The seqops custom ops have no ONNX translation, so a
converted model would otherwise no longer export. Outside an export none of this runs."""

import torch
import torch.nn.functional as F

exporting = torch.onnx.is_in_onnx_export


def _zeros_like_bias(w):
    return w.new_zeros(w.shape[0])


def rnn_layer(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """One layer-direction, time-first [T, B, I] -> (output, h_n, c_n) through torch._VF's one-layer RNN ops."""
    if batch_sizes is not None:
        raise NotImplementedError("seqops: ONNX export of packed sequences is not supported; export the model on "
                                  "padded input instead")
    has_biases = b_ih is not None or b_hh is not None
    params = [w_ih, w_hh]
    if has_biases:  # aten's RNN ops take both biases or neither
        params += [b_ih if b_ih is not None else _zeros_like_bias(w_ih),
                   b_hh if b_hh is not None else _zeros_like_bias(w_hh)]
    if w_hr is not None:
        params.append(w_hr)
    x = input.flip(0) if reverse else input
    h0 = hx.unsqueeze(0)
    if mode == "LSTM":
        out, h_n, c_n = torch._VF.lstm(x, (h0, cx.unsqueeze(0)), params, has_biases, 1, 0.0, False, False, False)
        c_n = c_n[0]
    else:
        run = {"GRU": torch._VF.gru, "RNN_TANH": torch._VF.rnn_tanh, "RNN_RELU": torch._VF.rnn_relu}[mode]
        out, h_n = run(x, h0, params, has_biases, 1, 0.0, False, False, False)
        c_n = None
    return (out.flip(0) if reverse else out), h_n[0], c_n


def lstm_cell(input, h, c, w_ih, w_hh, b_ih, b_hh):
    return torch.lstm_cell(input, (h, c), w_ih, w_hh, b_ih, b_hh)


def gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh):
    return torch.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)


def rnn_cell(relu, input, hx, w_ih, w_hh, b_ih, b_hh):
    return (torch.rnn_relu_cell if relu else torch.rnn_tanh_cell)(input, hx, w_ih, w_hh, b_ih, b_hh)


def attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    return F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale=scale,
                                          enable_gqa=enable_gqa)
