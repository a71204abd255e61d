"""The offline memory plan (toolchain/generate/memory_plan.py) on small graphs whose best plan
is known; the wheel and QEMU checks of real segments are in test_generate.py and the emulate
tests (every firmware embeds the planned segments)."""
from toolchain.export.flatbuffer import Graph, Operator, Tensor
from toolchain.generate import memory_plan


def graph(ops, tensors, inputs, outputs):
    return Graph(tuple(Operator(name, tuple(i), tuple(o), None) for name, i, o in ops),
                 tuple(Tensor(f"t{k}", shape, kind) for k, (shape, kind) in enumerate(tensors)),
                 tuple(inputs), tuple(outputs))


def act(*shape):
    return (tuple(shape), "INT8")


def test_silu_product_takes_the_place_of_its_logistic():
    # x = CONV(in); s = LOGISTIC(x); y = MUL(x, s); out = CONV(y)
    g = graph([("CONV_2D", [0, 5], [1]), ("LOGISTIC", [1], [2]), ("MUL", [1, 2], [3]), ("CONV_2D", [3, 5], [4])],
              [act(1, 8, 8, 4), act(1, 8, 8, 16), act(1, 8, 8, 16), act(1, 8, 8, 16), act(1, 8, 8, 4),
               act(4, 1, 1, 16)], inputs=[0], outputs=[4])
    offsets, head, without = memory_plan.plan(g, constant={5})
    # x and s both die at the MUL: y takes one of their places (the kernels read element i of
    # both before writing element i of y)
    assert offsets[3] in (offsets[1], offsets[2]) and offsets[1] != offsets[2]
    assert offsets[5] == memory_plan.ONLINE                         # weights are not in the arena
    assert without == 3 * 1024 and head == 2 * 1024   # x, s, y live at the MUL; with y in place, two buffers
    words = memory_plan.metadata_words(offsets)
    assert words[:3] == [1, 1, 6] and words[3:] == offsets


def test_no_overwrite_of_an_input_still_read_later_or_of_a_segment_output():
    # a = CONV(in); b = ADD(a, a2) where a is read again by the last op; c = RESHAPE(b) is an output
    g = graph([("CONV_2D", [0, 6], [1]), ("CONV_2D", [0, 6], [2]), ("ADD", [1, 2], [3]),
               ("MUL", [1, 3], [4]), ("RESHAPE", [4], [5])],
              [act(1, 4, 4, 8)] * 6 + [act(8, 1, 1, 8)], inputs=[0], outputs=[5, 4])
    offsets, head, without = memory_plan.plan(g, constant={6})
    assert offsets[3] == offsets[2] != offsets[1]    # the ADD over a2, which dies there, not over a
    assert offsets[4] in (offsets[1], offsets[3])    # the MUL over one of its inputs (both die there)
    assert offsets[5] != offsets[4]                  # 4 is a segment output: the RESHAPE may not overwrite it
    assert head <= without                           # the peak is at the ADD, with in, a, a2 live


def test_broadcast_and_other_sizes_keep_their_own_buffer():
    # y = MUL(x, scale[1,1,1,C]) may overwrite x (same shape as y), never the broadcast input
    g = graph([("CONV_2D", [0, 4], [1]), ("MEAN", [1], [2]), ("MUL", [2, 1], [3])],
              [act(1, 4, 4, 8), act(1, 4, 4, 8), act(1, 1, 1, 8), act(1, 4, 4, 8), act(8, 1, 1, 8)],
              inputs=[0], outputs=[3])
    offsets, _, _ = memory_plan.plan(g, constant={4})
    assert offsets[3] == offsets[1] and offsets[3] != offsets[2]
