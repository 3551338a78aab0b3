"""Write nmtkit's demo English-Korean corpus: short everyday sentences from hand-written templates.

    python corpora/demo/make_demo.py        # rewrites train/valid/test .en/.ko beside this file

Korean particles (은/는, 이/가, 을/를) are chosen from the last syllable's final consonant, and formal
endings (-ㅂ니다/-습니다) from the verb stem, so every sentence is grammatical. Deterministic: seed 0.
"""

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (English, Korean, grammatical person: 1, 2, 3 singular, or "pl")
SUBJECTS = [
    ("I", "저", 1), ("you", "당신", 2), ("he", "그", 3), ("she", "그녀", 3), ("we", "우리", "pl"),
    ("they", "그들", "pl"), ("my friend", "제 친구", 3), ("my mother", "어머니", 3), ("my father", "아버지", 3),
    ("the teacher", "선생님", 3), ("the children", "아이들", "pl"), ("my brother", "제 동생", 3),
]
JOBS = [("student", "학생"), ("teacher", "선생님"), ("doctor", "의사"), ("nurse", "간호사"), ("cook", "요리사"),
        ("singer", "가수"), ("police officer", "경찰관"), ("engineer", "엔지니어"), ("farmer", "농부"),
        ("painter", "화가"), ("writer", "작가"), ("pilot", "조종사"), ("lawyer", "변호사"), ("scientist", "과학자")]
LIKES = [("apples", "사과"), ("coffee", "커피"), ("music", "음악"), ("books", "책"), ("movies", "영화"), ("tea", "차"),
         ("bread", "빵"), ("dogs", "개"), ("cats", "고양이"), ("soccer", "축구"), ("milk", "우유"), ("flowers", "꽃"),
         ("summer", "여름"), ("winter", "겨울"), ("pizza", "피자"), ("chocolate", "초콜릿"), ("the sea", "바다"),
         ("history", "역사"), ("math", "수학"), ("rain", "비")]
PLACES = [("school", "학교"), ("the library", "도서관"), ("the park", "공원"), ("the market", "시장"),
          ("the hospital", "병원"), ("the office", "사무실"), ("the station", "역"), ("church", "교회"),
          ("the beach", "해변"), ("the museum", "박물관"), ("the bank", "은행")]
FOODS = [("bread", "빵"), ("apples", "사과"), ("rice", "밥"), ("noodles", "국수"), ("kimchi", "김치"), ("fish", "생선"),
         ("eggs", "달걀"), ("cake", "케이크"), ("salad", "샐러드"), ("soup", "수프")]
DRINKS = [("water", "물"), ("milk", "우유"), ("coffee", "커피"), ("tea", "차"), ("juice", "주스")]
THINGS = [("a car", "자동차"), ("a dog", "개"), ("a cat", "고양이"), ("a bicycle", "자전거"), ("a computer", "컴퓨터"),
          ("a house", "집"), ("a camera", "카메라"), ("an umbrella", "우산"), ("a book", "책"), ("a phone", "휴대폰")]
SUBJECTS_OF_STUDY = [("English", "영어"), ("Korean", "한국어"), ("math", "수학"), ("history", "역사"),
                     ("science", "과학"), ("music", "음악")]
# (English noun, Korean noun, [(English adjective, Korean stem)])
DESCRIBED = [
    ("room", "방", [("big", "크"), ("small", "작"), ("clean", "깨끗하"), ("quiet", "조용하")]),
    ("house", "집", [("big", "크"), ("small", "작"), ("expensive", "비싸"), ("beautiful", "아름답")]),
    ("car", "자동차", [("fast", "빠르"), ("expensive", "비싸"), ("cheap", "싸"), ("small", "작")]),
    ("bag", "가방", [("heavy", "무겁"), ("light", "가볍"), ("expensive", "비싸"), ("cheap", "싸")]),
    ("city", "도시", [("big", "크"), ("quiet", "조용하"), ("beautiful", "아름답"), ("clean", "깨끗하")]),
    ("book", "책", [("interesting", "재미있"), ("long", "길"), ("short", "짧"), ("difficult", "어렵")]),
    ("movie", "영화", [("interesting", "재미있"), ("long", "길"), ("short", "짧"), ("good", "좋")]),
    ("food", "음식", [("delicious", "맛있"), ("hot", "뜨겁"), ("cheap", "싸"), ("good", "좋")]),
    ("weather", "날씨", [("hot", "덥"), ("cold", "춥"), ("nice", "좋"), ("warm", "따뜻하")]),
    ("coffee", "커피", [("hot", "뜨겁"), ("cold", "차갑"), ("delicious", "맛있"), ("expensive", "비싸")]),
]
PHRASES = [("Hello.", "안녕하세요."), ("Thank you.", "감사합니다."), ("Good morning.", "좋은 아침입니다."),
           ("Nice to meet you.", "만나서 반갑습니다."), ("I am sorry.", "죄송합니다."), ("Goodbye.", "안녕히 가세요."),
           ("What is your name?", "이름이 무엇입니까?"), ("My name is Minsu.", "제 이름은 민수입니다."),
           ("How are you?", "어떻게 지내십니까?"), ("I am fine.", "저는 잘 지냅니다."), ("Where is the bathroom?", "화장실은 어디에 있습니까?"),
           ("What time is it?", "지금 몇 시입니까?"), ("I do not know.", "저는 모릅니다."), ("Please help me.", "저를 도와 주세요."),
           ("See you tomorrow.", "내일 뵙겠습니다."), ("It is raining.", "비가 옵니다."), ("It is snowing.", "눈이 옵니다.")]


def has_final(word: str) -> bool:
    """Whether the last Hangul syllable ends in a consonant (받침)."""
    code = ord(word[-1]) - 0xAC00
    return 0 <= code < 11172 and code % 28 != 0


def topic(w: str) -> str:
    return w + ("은" if has_final(w) else "는")


def subj(w: str) -> str:
    return w + ("이" if has_final(w) else "가")


def obj(w: str) -> str:
    return w + ("을" if has_final(w) else "를")


def formal(stem: str) -> str:
    """Formal present ending: 크 -> 큽니다, 작 -> 작습니다, 길 -> 깁니다 (ㄹ drops before ㅂ)."""
    last = ord(stem[-1]) - 0xAC00
    if last % 28 == 8:  # final ㄹ
        return stem[:-1] + chr(ord(stem[-1]) - 8 + 17) + "니다"
    if has_final(stem):
        return stem + "습니다"
    return stem[:-1] + chr(ord(stem[-1]) + 17) + "니다"


def en_be(p) -> str:
    return {1: "am", 2: "are", 3: "is", "pl": "are"}[p]


def en_verb(verb: str, p) -> str:
    if p != 3:
        return verb
    if verb == "have":
        return "has"
    if verb.endswith("y"):
        return verb[:-1] + "ies"
    return verb + ("es" if verb.endswith(("o", "sh", "ch")) else "s")


def en_do(p) -> str:
    return "does" if p == 3 else "do"


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def plural(noun: str) -> str:
    return noun + "s"


def pairs() -> list[tuple[str, str]]:
    out = []
    for se, sk, p in SUBJECTS:
        st = topic(sk)
        for je, jk in JOBS:
            if sk == jk:
                continue
            np = plural(je) if p == "pl" else article(je)
            out.append((f"{cap(se)} {en_be(p)} {np}.", f"{st} {jk}입니다."))
            out.append((f"{cap(se)} {en_be(p)} not {np}.", f"{st} {subj(jk)} 아닙니다."))
            if p != 1:
                out.append((f"{cap(en_be(p))} {se} {np}?", f"{st} {jk}입니까?"))
        for oe, ok in LIKES:
            out.append((f"{cap(se)} {en_verb('like', p)} {oe}.", f"{st} {obj(ok)} 좋아합니다."))
            out.append((f"{cap(se)} {en_verb('like', p)} {oe} very much.", f"{st} {obj(ok)} 아주 좋아합니다."))
            out.append((f"{cap(se)} {en_do(p)} not like {oe}.", f"{st} {obj(ok)} 좋아하지 않습니다."))
        for pe, pk in PLACES:
            out.append((f"{cap(se)} {en_verb('go', p)} to {pe} every day.", f"{st} 매일 {pk}에 갑니다."))
            out.append((f"{cap(se)} went to {pe} yesterday.", f"{st} 어제 {pk}에 갔습니다."))
            out.append((f"{cap(se)} will go to {pe} tomorrow.", f"{st} 내일 {pk}에 갈 것입니다."))
            out.append((f"{cap(se)} {en_verb('go', p)} to {pe} on Sundays.", f"{st} 일요일마다 {pk}에 갑니다."))
            out.append((f"{cap(se)} {en_be(p)} at {pe}.", f"{st} {pk}에 있습니다."))
        for fe, fk in FOODS:
            out.append((f"{cap(se)} {en_verb('eat', p)} {fe}.", f"{st} {obj(fk)} 먹습니다."))
            out.append((f"{cap(se)} ate {fe} for breakfast.", f"{st} 아침으로 {obj(fk)} 먹었습니다."))
            want = "싶습니다" if p in (1, 2) else "싶어 합니다"
            out.append((f"{cap(se)} {en_verb('want', p)} to eat {fe}.", f"{st} {obj(fk)} 먹고 {want}."))
        for de, dk in DRINKS:
            out.append((f"{cap(se)} {en_verb('drink', p)} {de} every morning.", f"{st} 매일 아침 {obj(dk)} 마십니다."))
        for te, tk in THINGS:
            out.append((f"{cap(se)} {en_verb('have', p)} {te}.", f"{st} {subj(tk)} 있습니다."))
            out.append((f"{cap(se)} {en_do(p)} not have {te}.", f"{st} {subj(tk)} 없습니다."))
        for ue, uk in SUBJECTS_OF_STUDY:
            out.append((f"{cap(se)} {en_verb('study', p)} {ue}.", f"{st} {obj(uk)} 공부합니다."))
            out.append((f"{cap(se)} studied {ue} yesterday.", f"{st} 어제 {obj(uk)} 공부했습니다."))
    for ne, nk, adjectives in DESCRIBED:
        for ae, stem in adjectives:
            out.append((f"The {ne} is {ae}.", f"{subj(nk)} {formal(stem)}."))
            out.append((f"The {ne} is very {ae}.", f"{subj(nk)} 아주 {formal(stem)}."))
            out.append((f"The {ne} is not {ae}.", f"{subj(nk)} {stem}지 않습니다."))
    for pe, pk in PLACES:
        out.append((f"Where is {pe}?", f"{topic(pk)} 어디에 있습니까?"))
    return out + PHRASES


def main(total: int = 2000, valid: int = 100, test: int = 100, seed: int = 0) -> None:
    everything = list(dict.fromkeys(pairs()))
    keep = ("I am a student.", "저는 학생입니다.")
    rng = random.Random(seed)
    rest = [p for p in everything if p != keep]
    rng.shuffle(rest)
    chosen = rest[: total - 1]
    splits = {"test": chosen[:test], "valid": chosen[test : test + valid], "train": [keep] + chosen[test + valid :]}
    for name, rows in splits.items():
        (HERE / f"{name}.en").write_text("".join(e + "\n" for e, _ in rows), encoding="utf-8")
        (HERE / f"{name}.ko").write_text("".join(k + "\n" for _, k in rows), encoding="utf-8")
        print(f"{name}: {len(rows)} pairs")
    print(f"from {len(everything)} distinct template sentences")


if __name__ == "__main__":
    main()
