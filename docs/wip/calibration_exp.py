"""Experiment driver: python exp.py T method gran passes [ntest] [ncal] [evalTs]"""
import sys, time, torch, json
from snnconv import convert
from snnconv.io import data
from snnconv.zoo.shipped import load_pretrained
from snnconv.conversion.calibrate import calibrate

def setup(ncal=1024, ntest=1000):
    d = torch.load("/tmp/calib/cifar.pt")
    cal = data.normalize(d["train_x"][:ncal], "cifar10").contiguous(memory_format=torch.channels_last)
    tx = data.normalize(d["test_x"][:ntest], "cifar10").contiguous(memory_format=torch.channels_last)
    return cal, tx, d["test_y"][:ntest]

def fresh():
    model = load_pretrained("resnet20-cifar10")
    return model, convert(model, shift="membrane").to(memory_format=torch.channels_last)

@torch.no_grad()
def accuracy(snn, tx, ty, Ts, bs=200):
    correct = {t: 0 for t in Ts}; ann = 0
    for i in range(0, len(tx), bs):
        x, y = tx[i:i+bs], ty[i:i+bs]
        out = snn(x, max(Ts))
        for t in Ts:
            correct[t] += (out[t-1].argmax(-1) == y).sum().item()
        ann += (snn.ann(x).argmax(-1) == y).sum().item()
    return {t: 100 * c / len(tx) for t, c in correct.items()}, 100 * ann / len(tx)

if __name__ == "__main__":
    T, method, gran, passes = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    ntest = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
    ncal = int(sys.argv[6]) if len(sys.argv) > 6 else 1024
    Ts = [int(v) for v in sys.argv[7].split(",")] if len(sys.argv) > 7 else [T]
    cal, tx, ty = setup(ncal, ntest)
    model, snn = fresh()
    t0 = time.time()
    rec = None
    if method != "none":
        rec = calibrate(snn, cal, T, method=method, granularity=gran, passes=passes)
    tc = time.time() - t0
    t0 = time.time()
    acc, ann = accuracy(snn, tx, ty, Ts)
    te = time.time() - t0
    res = dict(T=T, method=method, gran=gran, passes=passes, ntest=ntest, ncal=ncal, acc=acc, ann=ann, cal_s=round(tc), eval_s=round(te),
               before=rec and rec.mean_error("before"), after=rec and rec.mean_error("after"),
               abs_before=rec and sum(e.abs_error_before for e in rec.layers)/len(rec.layers),
               abs_after=rec and sum(e.abs_error_after for e in rec.layers)/len(rec.layers))
    print(json.dumps(res))
    with open("/tmp/calib/results.jsonl", "a") as f:
        f.write(json.dumps(res) + "\n")
