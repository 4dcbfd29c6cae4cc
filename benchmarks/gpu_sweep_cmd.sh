python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 VLMDPO_CACHE=/tmp/vc HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L; nproc
python3 -c "import torch,transformers,peft,datasets,pyarrow,open_clip,accelerate;print(torch.__version__,transformers.__version__,peft.__version__,datasets.__version__,pyarrow.__version__,accelerate.__version__,torch.cuda.is_available())"
S=$SECONDS; timeout 150 python3 -m vlmdpo.cli demo --quick --out /tmp/q progress=false > $OUT/quick.txt 2>&1 || { tail -40 $OUT/quick.txt; exit 2; }; grep "\[demo\]" $OUT/quick.txt; echo quick $((SECONDS-S)) s
printf "default mixed_precision=no\nattr mixed_precision=no attribute_questions=true\nattr_noisyq mixed_precision=no attribute_questions=true noisy_questions=true\npatch8_noisyq mixed_precision=no patch_size=8 noisy_questions=true\n" > /tmp/r.txt
echo "bf16 mixed_precision=auto" > /tmp/b.txt
SEEDS=0 timeout 480 bash benchmarks/sweep_recipes.sh outputs/sweep /tmp/b.txt > $OUT/bf16.txt 2>&1 &
nice -n 10 timeout 400 python3 -m pytest -q -x -p no:cacheprovider tests > $OUT/pytest.txt 2>&1 &
timeout 480 bash benchmarks/sweep_recipes.sh outputs/sweep /tmp/r.txt > $OUT/sweep.txt 2>&1
wait; nvidia-smi --query-gpu=memory.used --format=csv
tar czf $OUT/sweep.tgz --exclude='cache-*' --exclude=runs --exclude='*.png' outputs/sweep
tail -4 $OUT/pytest.txt; cat $OUT/bf16.txt $OUT/sweep.txt; grep -h "\[demo\]" outputs/sweep/*/seed*.log | sort | uniq -c | head -0; for f in outputs/sweep/*/seed*.log; do echo "$f: $(grep -o '\[demo\] [a-z ]*: [0-9.]* s' $f | tr '\n' ' ')"; done
