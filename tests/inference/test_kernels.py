"""The compiled kernels against the PyTorch reference: bit-identical outputs on every code path (AVX-512,
AVX2, portable), odd shapes, batch sizes 1 to 64, one and two threads."""
import copy
import ctypes
import mmap

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bnn.inference import kernels
from bnn.inference.modules import PackedBinaryConv2d, PackedBinaryLinear
from bnn.inference.thresholds import ChannelThresholds

pytestmark = pytest.mark.skipif(kernels.extension() is None, reason="no C++ compiler: the reference runs alone")
PATHS = [name for isa, name in kernels.ISA_NAMES.items() if isa <= (kernels.kernel_isa() or 0)]


def packed_conv(cin, cout, k, stride, padding, dilation, groups, seed):
    """k, stride, padding, dilation: ints or (height, width) pairs."""
    pair = lambda v: tuple(v) if isinstance(v, tuple) else (v, v)  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    thresholds = ChannelThresholds(torch.randn(cin, generator=g) * 0.3,
                                   torch.randint(-1, 2, (cin,), generator=g).to(torch.int8))
    signs = torch.where(torch.randn(cout, cin // groups, *pair(k), generator=g) >= 0, 1.0, -1.0)
    return PackedBinaryConv2d(thresholds, signs, pair(stride), pair(padding), pair(dilation),
                              groups, scale=torch.rand(cout, generator=g) + 0.5, bias=torch.randn(cout, generator=g))


def run(layer, x, path, monkeypatch, *more_args):
    monkeypatch.setenv("BNN_KERNELS", path)
    return layer(x, *more_args)


# widths up to 41: rows of several SIMD vectors (8 pixels each on AVX-512), in register blocks of 1 to 3
@settings(max_examples=150, deadline=None)
@given(cin_groups=st.sampled_from([(1, 1), (3, 1), (32, 1), (64, 1), (65, 1), (130, 2), (8, 4), (16, 16)]),
       cout_per_group=st.integers(1, 37), kh=st.sampled_from([1, 2, 3, 5]), kw=st.sampled_from([1, 2, 3, 5]),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       dh=st.integers(1, 2), dw=st.integers(1, 2), height=st.integers(3, 9), width=st.integers(3, 41),
       seed=st.integers(0, 99))
def test_every_path_matches_the_reference(cin_groups, cout_per_group, kh, kw, sh, sw, ph, pw, dh, dw, height,
                                          width, seed):
    cin, groups = cin_groups
    assume(height + 2 * ph >= dh * (kh - 1) + 1 and width + 2 * pw >= dw * (kw - 1) + 1)
    layer = packed_conv(cin, cout_per_group * groups, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups, seed)
    x = torch.randn(2, cin, height, width, generator=torch.Generator().manual_seed(seed))
    x[0, 0, 0, :] = 0.0
    with pytest.MonkeyPatch.context() as mp:
        expected = run(layer, x, "reference", mp)
        for path in PATHS:
            assert torch.equal(run(layer, x, path, mp), expected), path


@pytest.mark.parametrize("batch", [1, 5, 64])
@pytest.mark.parametrize("threads", [1, 2])
def test_batches_and_threads(batch, threads, monkeypatch):
    torch.set_num_threads(threads)
    layer = packed_conv(67, 45, 3, 1, 1, 1, 1, seed=batch)
    x = torch.randn(batch, 67, 7, 6)
    expected = run(layer, x, "reference", monkeypatch)
    assert torch.equal(run(layer, x, PATHS[-1], monkeypatch), expected)


def reference_bits(layer, x):
    """``layer``'s packed input for ``x``, by the pack kernel's portable path (compares of its own): int64 words."""
    return kernels.extension().pack_input(x, layer.threshold, layer.direction, layer.groups, layer.stride[1], 0)


def same_bits(bits, layer, x, path):
    """Whether ``bits``, packed by ``path``, are ``layer``'s packed input for ``x`` (reference_bits), in words of
    that path's width for the layer: int32 where the half-word path runs it (compared as the low halves
    of int64 words), else int64."""
    isa = kernels.ISA_CODES[path]
    word_bytes = kernels.extension().packed_word_bytes(layer.in_channels // layer.groups, isa)
    assert bits.dtype == (torch.int32 if word_bytes == 4 else torch.int64), (path, bits.dtype)
    words = bits.to(torch.int64) & 0xFFFFFFFF if word_bytes == 4 else bits
    return torch.equal(words, reference_bits(layer, x))


def guarded_copy(words: torch.Tensor, at_end: bool) -> torch.Tensor:
    """``words`` copied into memory that ends (``at_end``) or starts at a page no access is allowed to: a read past
    the copy's end, or before its start, kills the process."""
    page = mmap.PAGESIZE
    nbytes = words.numel() * words.element_size()
    pages = -(-nbytes // page) + 2
    memory = mmap.mmap(-1, pages * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for guard in (base, base + (pages - 1) * page):
        assert libc.mprotect(guard, page, 0) == 0, ctypes.get_errno()  # (PROT_NONE)
    start = (pages - 1) * page - nbytes if at_end else page
    copy = torch.frombuffer(memory, dtype=words.dtype, offset=start, count=words.numel()).view(words.shape)
    copy.copy_(words)
    return copy


# the kernels load whole vectors, past a row's end and the input's ends too (masking lanes in the sums alone):
# an input without storage around it, here memory no access is allowed to right after or before it, is copied
# into storage that has it (without the copy, the process dies)
@pytest.mark.parametrize("cin,cout,k,width", [(32, 16, 3, 16), (64, 24, 3, 7), (100, 8, 3, 9), (40, 8, 5, 12),
                                              (16, 8, 1, 30)])
@pytest.mark.parametrize("at_end", [True, False])
def test_an_input_with_nothing_around_it(cin, cout, k, width, at_end, monkeypatch):
    layer = packed_conv(cin, cout, k, 1, k // 2, 1, 1, seed=cin)
    x = torch.randn(2, cin, 5, width, generator=torch.Generator().manual_seed(width))
    for path in PATHS:
        monkeypatch.setenv("BNN_KERNELS", path)
        isa = kernels.ISA_CODES[path]
        packed = kernels.extension().pack_input(x, layer.threshold, layer.direction, 1, 1, isa)
        assert torch.equal(layer(x, packed=guarded_copy(packed, at_end)), layer(x)), path


# a layer that hands its next layer the packed input: the bits equal that layer's own packing of the output
# (any groups, stride and padding on either side, channel counts that leave partial bytes and words)
@settings(max_examples=80, deadline=None)
@given(cout_groups=st.sampled_from([(8, 1), (37, 1), (64, 1), (72, 1), (130, 1), (16, 2), (48, 3), (64, 8)]),
       next_groups=st.sampled_from([1, 2, 8]), k=st.sampled_from([1, 3]), next_k=st.sampled_from([1, 2, 3]),
       stride=st.integers(1, 2), next_stride=st.integers(1, 3), width=st.integers(4, 40),
       height=st.integers(3, 7), seed=st.integers(0, 99),
       directions=st.sampled_from(["random", "all x >= t", "all x >= t but one"]))
def test_handed_over_bits_match_the_next_layers_own_packing(cout_groups, next_groups, k, next_k, stride,
                                                           next_stride, width, height, seed, directions):
    cout, groups = cout_groups
    assume(cout % next_groups == 0 and (next_groups == 1 or (cout // next_groups) % 8 == 0))
    first = packed_conv(16, cout, k, stride, k // 2, 1, groups if 16 % groups == 0 else 1, seed)
    second = packed_conv(cout, 24, next_k, next_stride, next_k // 2, 1, next_groups, seed + 1)
    if directions != "random":  # (the AVX-512 epilogue has a path of its own for 8 channels all x >= t)
        second.direction.fill_(1)
        if directions == "all x >= t but one":
            second.direction[seed % cout] = seed % 2 - 1  # (x <= t, or a constant channel)
    first.hand_bits_to(second)
    x = torch.randn(2, 16, height, width, generator=torch.Generator().manual_seed(seed))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BNN_KERNELS", "reference")
        out_ref, none = first(x)
        expected_next = second(out_ref)
        assert none is None
        for path in PATHS:
            mp.setenv("BNN_KERNELS", path)
            out, bits = first(x)
            assert torch.equal(out, out_ref), path
            assert same_bits(bits, second, out, path), path
            assert torch.equal(second(out, packed=bits), expected_next), path


# a layer of one group writes every bit of the words it hands over, the padding of a group's last word included:
# the new tensor it packs into needs no zeros (its memory may hold anything, as here, where it is all ones)
@pytest.mark.parametrize("cout", [8, 24, 37, 72, 100])
@pytest.mark.parametrize("next_stride", [1, 2])
@pytest.mark.parametrize("width", [16, 30])
def test_handed_over_words_written_whole_with_one_group(cout, next_stride, width):
    first = packed_conv(40, cout, 3, 1, 1, 1, 1, seed=cout)
    second = packed_conv(cout, 16, 3, next_stride, 1, 1, 1, seed=cout + 1)
    x = torch.randn(2, 40, 5, width, generator=torch.Generator().manual_seed(width))
    weight, codes, params = first._kernel_args()
    ext = kernels.extension()
    for isa, path in kernels.ISA_NAMES.items():
        if path not in PATHS:
            continue
        packed = ext.pack_input(x, first.threshold, first.direction, 1, 1, isa)
        word_type = torch.int32 if ext.packed_word_bytes(cout, isa) == 4 else torch.int64
        all_ones = torch.full((1, -(-cout // 64), 2, 5, next_stride, -(-width // next_stride)), -1, dtype=word_type)

        def conv(stride_of_next):  # (3x3, stride 1, padding 1, one group; packing into all_ones)
            return ext.binary_conv2d(packed, width, weight, 40, cout, 3, 3, 1, 1, 1, 1, 1, 1, 1, codes, params, None,
                                     False, second.threshold, second.direction, 1, stride_of_next, cout, 0, all_ones,
                                     cout, 0, None, isa)
        out, bits = conv(next_stride)
        assert bits.data_ptr() == all_ones.data_ptr()
        assert same_bits(bits, second, out, path), path
        with pytest.raises(RuntimeError, match="written only for a next layer of stride 1 or more"):
            conv(0)


def test_handing_over_needs_whole_bytes_of_channels():
    with pytest.raises(ValueError, match="8 channels per group"):
        packed_conv(8, 12, 3, 1, 1, 1, 2, seed=0).hand_bits_to(packed_conv(12, 8, 3, 1, 1, 1, 1, seed=1))
    with pytest.raises(ValueError, match="8 channels per group"):
        packed_conv(8, 12, 3, 1, 1, 1, 1, seed=0).hand_bits_to(packed_conv(12, 12, 3, 1, 1, 1, 3, seed=1))


# groups of at most 32 input channels take the half-word path (32-bit lanes, 16 pixels per AVX-512 vector):
# rows of several of its register blocks (up to 48 pixels each), odd and even counts of 8-pixel vectors, and
# the bits it hands to the next layer; 33 channels per group is the first count the 64-bit path takes again
@pytest.mark.parametrize("cin, groups", [(32, 1), (17, 1), (64, 2), (33, 1)])
@pytest.mark.parametrize("width, stride", [(49, 1), (97, 1), (112, 1), (113, 2)])
def test_wide_rows_of_narrow_groups(cin, groups, width, stride, monkeypatch):
    first = packed_conv(cin, 32, 3, stride, 1, 1, groups, seed=width)
    first.fuse("add", torch.randn(32, generator=torch.Generator().manual_seed(cin)))
    x = torch.randn(2, cin, 5, width, generator=torch.Generator().manual_seed(width))
    expected = run(first, x, "reference", monkeypatch)
    for path in PATHS:
        assert torch.equal(run(first, x, path, monkeypatch), expected), path
    second = packed_conv(32, 16, 3, 1, 1, 1, 1, seed=cin)
    first.hand_bits_to(second)
    for path in PATHS:
        out, bits = run(first, x, path, monkeypatch)
        assert torch.equal(out, expected) and same_bits(bits, second, out, path), path


# kernels of more taps or words than a byte holds counts of (the AVX2 half-word path keeps byte counts, summing
# them every 31 taps; its path for taps of two or more words, every 31 words): 7x7 and 6x6 on narrow groups, 7x7
# on a 64-bit word, 5x5 on two words (50 words a pixel), 4x4 on groups of three words (48), against the reference
# (and every input bit against every weight bit: the most counts a byte can take, 8 a tap or word)
@pytest.mark.parametrize("cin, groups, k", [(32, 1, 7), (16, 2, 6), (8, 1, (7, 5)), (64, 1, 7), (128, 1, 5),
                                            (260, 2, 4)])
@pytest.mark.parametrize("all_against", [False, True])
def test_kernels_of_many_taps(cin, groups, k, all_against, monkeypatch):
    kh, kw = (k, k) if isinstance(k, int) else k
    if all_against:  # (inputs all above their thresholds, weights all -1)
        thresholds = ChannelThresholds(torch.zeros(cin), torch.ones(cin, dtype=torch.int8))
        layer = PackedBinaryConv2d(thresholds, -torch.ones(12, cin // groups, kh, kw), (1, 1), (kh // 2, kw // 2),
                                   (1, 1), groups, scale=torch.ones(12))
        x = torch.ones(2, cin, 9, 21)
    else:
        layer = packed_conv(cin, 12, k, 1, (kh // 2, kw // 2), 1, groups, seed=cin)
        x = torch.randn(2, cin, 9, 21, generator=torch.Generator().manual_seed(kh * kw))
    expected = run(layer, x, "reference", monkeypatch)
    for path in PATHS:
        assert torch.equal(run(layer, x, path, monkeypatch), expected), path


# the AVX-512 and AVX2 paths pack groups of at most 32 channels in 32-bit words (their half-word paths read them
# so), the portable path and wider groups in 64-bit words; a convolution given words of the other width says so
@pytest.mark.parametrize("cin, groups", [(32, 1), (64, 2), (33, 1), (64, 1)])
def test_packed_word_width(cin, groups):
    ext = kernels.extension()
    layer = packed_conv(cin, 16, 3, 1, 1, 1, groups, seed=cin)
    x = torch.randn(1, cin, 4, 9, generator=torch.Generator().manual_seed(groups))
    weight, codes, params = layer._kernel_args()
    for path in PATHS:
        isa = kernels.ISA_CODES[path]
        narrow = path in ("avx2", "avx512") and cin // groups <= 32
        assert ext.packed_word_bytes(cin // groups, isa) == (4 if narrow else 8)
        packed = ext.pack_input(x, layer.threshold, layer.direction, groups, 1, isa)
        assert packed.dtype == (torch.int32 if narrow else torch.int64)
        assert torch.equal(packed.to(torch.int64) & 0xFFFFFFFF if narrow else packed, reference_bits(layer, x))
        other = packed.to(torch.int64 if narrow else torch.int32)
        with pytest.raises(RuntimeError, match=f"packed input must be .* words for {cin // groups} channels per group"):
            ext.binary_conv2d(other, 9, weight, cin, 16, 3, 3, 1, 1, 1, 1, 1, 1, groups, codes, params, None, False,
                              None, None, 0, 0, 16, 0, None, 16, 0, None, isa)


# 7x7-like maps: rows of at most 8 output pixels (one vector per row on AVX-512), on the 64-bit path, with
# kernel rows in the padding, stride 2, groups, a fused residual and the bits handed over
@pytest.mark.parametrize("cin, groups", [(64, 1), (130, 2), (40, 1)])
@pytest.mark.parametrize("height, width, stride, padding", [(7, 7, 1, 1), (8, 5, 1, 2), (11, 14, 2, 1), (4, 8, 1, 0)])
def test_narrow_rows_in_blocks_of_rows(cin, groups, height, width, stride, padding, monkeypatch):
    first = packed_conv(cin, 16 * groups, 3, stride, padding, 1, groups, seed=height * width)
    first.fuse("add_residual")
    x = torch.randn(3, cin, height, width, generator=torch.Generator().manual_seed(cin))
    ho, wo = (height + 2 * padding - 3) // stride + 1, (width + 2 * padding - 3) // stride + 1
    residual = torch.randn(3, 16 * groups, ho, wo, generator=torch.Generator().manual_seed(width))
    expected = run(first, x, "reference", monkeypatch, residual)
    second = packed_conv(16 * groups, 8, 3, 1, 1, 1, 1, seed=cin)
    first.hand_bits_to(second)
    for path in PATHS:
        out, bits = run(first, x, path, monkeypatch, residual)
        assert torch.equal(out, expected) and same_bits(bits, second, out, path), path


# stride 1 with the output as large as the input, rows that leave lanes empty: on AVX-512 the pixels run flat
# over the batch, so vectors (of 8 pixels, or 16 on the half-word path) cross rows and images; maps smaller than
# a vector (3x3, 1x1) put several images in one; dilation, groups, a residual (added and written over) and the
# bits handed to a next layer of stride 1 and of stride 2
@pytest.mark.parametrize("cin, groups", [(64, 1), (130, 2), (24, 1), (64, 4)])
@pytest.mark.parametrize("height, width, k, dilation", [(7, 7, 3, 1), (14, 14, 3, 1), (3, 3, 3, 1), (1, 1, 1, 1),
                                                        (5, 9, 3, 2), (6, 11, (1, 3), 1)])
@pytest.mark.parametrize("batch", [1, 5])
def test_flat_pixels_across_rows_and_images(cin, groups, height, width, k, dilation, batch, monkeypatch):
    kh, kw = k if isinstance(k, tuple) else (k, k)
    padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
    cout = 16 * groups
    first = packed_conv(cin, cout, (kh, kw), 1, padding, dilation, groups, seed=height * width + cin)
    first.fuse("add_residual")
    first.fuse("prelu", torch.rand(cout, generator=torch.Generator().manual_seed(batch)))
    x = torch.randn(batch, cin, height, width, generator=torch.Generator().manual_seed(cin + batch))
    residual = torch.randn(batch, cout, height, width, generator=torch.Generator().manual_seed(width))
    expected = run(first, x, "reference", monkeypatch, residual.clone())
    for path in PATHS:
        assert torch.equal(run(first, x, path, monkeypatch, residual.clone()), expected), path
    first.overwrites_residual = True
    for next_stride in (1, 2):
        second = packed_conv(cout, 8, 3, next_stride, 1, 1, 1, seed=cin + next_stride)
        first.hand_bits_to(second)
        for path in PATHS:
            r = residual.clone()
            out, bits = run(first, x, path, monkeypatch, r)
            assert out.data_ptr() == r.data_ptr() and torch.equal(out, expected), path
            assert same_bits(bits, second, out, path), path


# two threads split a layer by words of 64 output channels when there are at least two, else by rows (or flat
# pixels); either way, the same output and bits as the reference, and no two threads write the same words
# (AVX-512, 40 input channels: rows of 14 and 24 pixels run flat, 24 for its vectors' odd count; 16 in rows)
@pytest.mark.parametrize("cout", [24, 64, 192])
@pytest.mark.parametrize("width, stride", [(14, 1), (16, 1), (24, 1), (15, 2)])
@pytest.mark.parametrize("batch", [1, 3])
def test_threads_split_by_words_or_rows(cout, width, stride, batch, monkeypatch):
    first = packed_conv(40, cout, 3, stride, 1, 1, 1, seed=cout + width)
    x = torch.randn(batch, 40, 9, width, generator=torch.Generator().manual_seed(batch))
    expected = run(first, x, "reference", monkeypatch)
    second = packed_conv(cout, 8, 3, 1, 1, 1, 1, seed=width)
    first.hand_bits_to(second)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for path in PATHS:
                out, bits = run(first, x, path, monkeypatch)
                assert torch.equal(out, expected) and same_bits(bits, second, out, path), (n, path)
    finally:
        torch.set_num_threads(threads)


def test_output_written_over_the_residual(monkeypatch):
    """overwrites_residual: the kernels return the residual tensor itself, holding what a new output would."""
    layer = packed_conv(40, 24, 3, 1, 1, 1, 1, seed=3)
    layer.fuse("add_residual")
    layer.fuse("prelu", torch.rand(24, generator=torch.Generator().manual_seed(4)))
    x = torch.randn(2, 40, 9, 11, generator=torch.Generator().manual_seed(5))
    residual = torch.randn(2, 24, 9, 11, generator=torch.Generator().manual_seed(6))
    expected = run(layer, x, "reference", monkeypatch, residual.clone())
    layer.overwrites_residual = True
    for path in PATHS:
        r = residual.clone()
        out = run(layer, x, path, monkeypatch, r)
        assert out.data_ptr() == r.data_ptr() and torch.equal(out, expected), path


def test_buffers_changed_in_place_reach_the_kernels(monkeypatch):
    """The kernels' weight layout and epilogue program are cached per layer: a state dict loaded into the layer
    (copied into its buffers) or a buffer changed in place must not leave the kernels on the old values."""
    layer, other = packed_conv(70, 24, 3, 1, 1, 1, 1, seed=7), packed_conv(70, 24, 3, 1, 1, 1, 1, seed=8)
    x = torch.randn(2, 70, 6, 9, generator=torch.Generator().manual_seed(9))
    for path in PATHS:
        run(layer, x, path, monkeypatch)  # (fills the cache)
    layer.load_state_dict(other.state_dict())
    expected = run(other, x, "reference", monkeypatch)
    for path in PATHS:
        assert torch.equal(run(layer, x, path, monkeypatch), expected), path
    with torch.no_grad():
        layer.scale.mul_(2.0)
        layer.weight_bits[:3] = ~layer.weight_bits[:3]
    expected = run(layer, x, "reference", monkeypatch)
    for path in PATHS:
        assert torch.equal(run(layer, x, path, monkeypatch), expected), path
    layer.bias = torch.randn(24, generator=torch.Generator().manual_seed(10))  # (a buffer replaced)
    expected = run(layer, x, "reference", monkeypatch)
    for path in PATHS:
        assert torch.equal(run(layer, x, path, monkeypatch), expected), path


def test_a_prepared_call_follows_its_layer(monkeypatch):
    """A layer keeps its kernel call prepared (its fixed arguments: weights, epilogue, hand-over): an attribute set,
    a step fused, a hand-over set up, the next layer's thresholds changed in place, the layer copied or moved
    through dtypes, after the layer ran, must all reach the kernels."""
    layer, second = packed_conv(64, 24, 3, 1, 1, 1, 1, seed=3), packed_conv(24, 16, 3, 1, 1, 1, 1, seed=4)
    x = torch.randn(2, 64, 6, 9, generator=torch.Generator().manual_seed(5))
    for path in PATHS:
        run(layer, x, path, monkeypatch)  # (prepares the call)
    for emit_dot in (True, False):  # (an attribute, not a buffer: the sums alone, then the epilogue again)
        layer.emit_dot = emit_dot
        expected = run(layer, x, "reference", monkeypatch)
        for path in PATHS:
            assert torch.equal(run(layer, x, path, monkeypatch), expected), (path, emit_dot)
    layer.fuse("add", torch.randn(24, generator=torch.Generator().manual_seed(6)))
    expected = run(layer, x, "reference", monkeypatch)
    for path in PATHS:
        assert torch.equal(run(layer, x, path, monkeypatch), expected), path
    layer.hand_bits_to(second)
    expected, _ = run(layer, x, "reference", monkeypatch)
    for path in PATHS:
        out, bits = run(layer, x, path, monkeypatch)
        assert torch.equal(out, expected) and same_bits(bits, second, out, path), path
    with torch.no_grad():  # the next layer's thresholds, changed in both layers
        layer.next_threshold.add_(0.25)
        second.threshold.add_(0.25)
    for path in PATHS:
        out, bits = run(layer, x, path, monkeypatch)
        assert torch.equal(out, expected) and same_bits(bits, second, out, path), path
    clone = copy.deepcopy(layer)
    with torch.no_grad():
        clone.scale.mul_(2.0)
    expected_clone, _ = run(clone, x, "reference", monkeypatch)
    for path in PATHS:
        assert torch.equal(run(clone, x, path, monkeypatch)[0], expected_clone), path
        assert torch.equal(run(layer, x, path, monkeypatch)[0], expected), path
    layer.double().float()  # (new buffers, of the same values; then one of them changed)
    with torch.no_grad():
        layer.scale.mul_(3.0)
    expected, _ = run(layer, x, "reference", monkeypatch)
    for path in PATHS:
        assert torch.equal(run(layer, x, path, monkeypatch)[0], expected), path


def test_the_setting_is_read_at_every_call(monkeypatch):
    """``BNN_KERNELS`` set, changed or removed through os.environ applies at the next call (kernels.active reads
    the mapping behind os.environ), in any letter case."""
    best = kernels.ISA_CODES[PATHS[-1]]
    monkeypatch.delenv("BNN_KERNELS", raising=False)
    assert kernels.active() == (kernels.extension(), best)
    monkeypatch.setenv("BNN_KERNELS", "Portable")
    assert kernels.active()[1] == kernels.ISA_CODES["portable"] == kernels.kernel_isa()
    monkeypatch.setenv("BNN_KERNELS", "REFERENCE")
    assert kernels.active() == (None, None) and kernels.kernel_isa() is None
    monkeypatch.delenv("BNN_KERNELS")
    assert kernels.active()[1] == best == kernels.kernel_isa()


@pytest.mark.parametrize("seed", range(4))
def test_multiply_add_step_rounds_once_on_every_path(seed, monkeypatch):
    """The kernels' fused multiply-add (hardware or C library) against the reference's, in torch ops."""
    layer = packed_conv(70, 45, 3, 1, 1, 1, 1, seed=seed)
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(45, generator=g) * 10.0 ** torch.randint(-3, 4, (45,), generator=g)
    layer.fuse("multiply_add", torch.stack([factors, torch.randn(45, generator=g) * 100]))
    layer.fuse("multiply", torch.rand(45, generator=g))
    x = torch.randn(3, 70, 9, 13, generator=g)
    expected = run(layer, x, "reference", monkeypatch)
    for path in PATHS:
        assert torch.equal(run(layer, x, path, monkeypatch), expected), path


def packed_linear(cin, cout, seed):
    g = torch.Generator().manual_seed(seed)
    thresholds = ChannelThresholds(torch.randn(cin, generator=g) * 0.3,
                                   torch.randint(-1, 2, (cin,), generator=g).to(torch.int8))
    signs = torch.where(torch.randn(cout, cin, generator=g) >= 0, 1.0, -1.0)
    return PackedBinaryLinear(thresholds, signs, scale=torch.rand(cout, generator=g) + 0.5,
                              bias=torch.randn(cout, generator=g))


# the linear layer runs as a 1x1 convolution over its input's rows: any leading shape, unbatched, one row,
# rows across SIMD vectors and register blocks, features off the word size (20: the half-word path, on
# 32-bit words)
@pytest.mark.parametrize("shape", [(70,), (1, 70), (5, 70), (2, 3, 70), (64, 70), (41, 70), (0, 70)])
@pytest.mark.parametrize("features", [(70, 13), (64, 8), (130, 37), (20, 9)])
def test_linear_on_every_path_matches_the_reference(shape, features, monkeypatch):
    cin, cout = features
    layer = packed_linear(cin, cout, seed=cin + cout)
    x = torch.randn(*shape[:-1], cin, generator=torch.Generator().manual_seed(len(shape)))
    expected = run(layer, x, "reference", monkeypatch)
    assert expected.shape == (*shape[:-1], cout)
    for path in PATHS:
        out = run(layer, x, path, monkeypatch)
        assert torch.equal(out, expected), path
        assert out.is_contiguous(), path  # as the reference's: a float layer after it may round by layout


def test_a_linear_layers_prepared_call_follows_it(monkeypatch):
    """The linear layer keeps its kernel call prepared too: its scale changed in place, its bias and its scale
    replaced (by assignment, and by register_buffer) and a step fused after it ran must reach the kernels."""
    layer = packed_linear(70, 13, seed=11)
    x = torch.randn(5, 70, generator=torch.Generator().manual_seed(12))
    for path in PATHS:
        run(layer, x, path, monkeypatch)  # (prepares the call)
    for change in (lambda: layer.scale.mul_(2.0), lambda: setattr(layer, "bias", torch.randn(13)),
                   lambda: layer.register_buffer("scale", torch.rand(13) + 0.5),
                   lambda: layer.fuse("prelu", torch.rand(13))):
        with torch.no_grad():
            change()
        expected = run(layer, x, "reference", monkeypatch)
        for path in PATHS:
            assert torch.equal(run(layer, x, path, monkeypatch), expected), path
