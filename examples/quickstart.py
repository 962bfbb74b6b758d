from snnconv import convert
from snnconv.io import data
from snnconv.zoo import shipped

model = shipped.load_pretrained("cnn-mnist")  # a CNN trained with ThresholdReLU(y_th=1)
test = data.load("mnist", "test", root="../shared/data")
x, y = data.normalize(test.images[:1000], "mnist"), test.labels[:1000]
snn = convert(model, shift="membrane")  # V_th = y_th per layer, membrane starts at V_th/2
out = snn(x, 32)  # readout after every step: [32, 1000, 10]
print(f"ANN      {(model(x).argmax(1) == y).float().mean():.3f}")
for t in (4, 8, 16, 32):
    print(f"SNN T={t:<2} {(out[t - 1].argmax(1) == y).float().mean():.3f}")
print(
    "spikes/neuron/step",
    {n: round(m.spike_count.mean().item() / 32, 3) for n, m in snn.layers.items()},
)
