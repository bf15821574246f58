"""The "multilingual" corpus of the tokenization lab: a paragraph in each of 15 languages and
scripts, then emoji (ZWJ sequences, flags, skin tones, keycaps) and a little code. Written for
this project (no copied text); a Python module rather than a data file so that it installs
with the package."""

MULTILINGUAL = {
    "English": """\
The old lighthouse keeper climbed the spiral stairs every evening at dusk. He counted the steps out of habit, one hundred and twelve of them, and paused at the window halfway up to watch the fishing boats come home. On calm nights the sea looked like polished slate; on stormy ones he could hear the waves throwing pebbles against the rocks below.""",
    "German": """\
Am Samstagmorgen fuhren wir mit dem Fahrrad zum Wochenmarkt. Die Händlerin mit den Äpfeln erzählte uns, dass der Frühling dieses Jahr ungewöhnlich spät gekommen sei. Wir kauften frisches Brot, ein Stück Bergkäse und einen Strauß Tulpen für die Küche. Auf dem Rückweg begann es leicht zu regnen, aber niemand störte sich daran.""",
    "French": """\
Chaque été, ma grand-mère préparait des confitures avec les abricots du jardin. La cuisine sentait le sucre chaud et la cannelle pendant des jours entiers. Elle notait les dates sur de petites étiquettes écrites à la main, et nous avions le droit d'ouvrir le premier pot à la rentrée. « C'est meilleur quand on a attendu », disait-elle toujours.""",
    "Spanish": """\
El tren salió de la estación con diez minutos de retraso, pero nadie parecía tener prisa. Una niña dibujaba montañas en la ventana empañada mientras su padre leía el periódico. Al pasar el río, el revisor anunció que el café del vagón restaurante era gratis esa mañana. ¿Quién iba a decir que no?""",
    "Russian": """\
Зимой в нашей деревне темнеет очень рано. Мы собирались у печки, пили горячий чай с вареньем и слушали, как дед рассказывает истории о своей молодости. Снег за окном падал медленно и тихо, а кошка спала на подоконнике, не обращая на нас никакого внимания.""",
    "Greek": """\
Το μικρό καφενείο στην πλατεία ανοίγει πριν από την ανατολή του ήλιου. Οι ψαράδες πίνουν τον καφέ τους όρθιοι και συζητούν για τον καιρό. Όταν φυσάει βοριάς, κανείς δεν βγαίνει στη θάλασσα, και τα τραπέζια γεμίζουν με τάβλι και γέλια μέχρι το μεσημέρι.""",
    "Arabic": """\
في الصباح الباكر يمتلئ السوق القديم بأصوات الباعة ورائحة الخبز الطازج. يمشي الناس بين الدكاكين الضيقة ويتوقفون لشرب الشاي بالنعناع. كان جدي يقول إن أجمل ساعات اليوم هي تلك التي تسبق الزحام.""",
    "Hebrew": """\
בבוקר יום שישי הרחוב מלא באנשים שקונים פרחים ולחם לשבת. הילדים רצים בין הדוכנים, והמוכר הזקן בפינה תמיד נותן להם תפוז קטן. אחרי הצהריים הכול נעשה שקט, והעיר מתכוננת למנוחה.""",
    "Hindi": """\
बरसात के मौसम में हमारे गाँव की सड़कें कीचड़ से भर जाती हैं। बच्चे कागज़ की नावें बनाकर पानी में छोड़ते हैं और देखते हैं कि किसकी नाव सबसे दूर जाती है। शाम को माँ गरम पकौड़े और अदरक वाली चाय बनाती है।""",
    "Chinese": """\
我家楼下有一家小面馆，老板每天早上五点就开始和面。他说好的面条需要耐心，急不得。周末的时候，门口总是排着长队，有学生，也有刚下夜班的护士。一碗热汤面，能让人忘记一天的疲惫。""",
    "Japanese": """\
駅前の小さな本屋は、もう四十年も同じ場所で営業している。店主のおばあさんは、常連客の好みをすべて覚えていて、新しい本が入るとそっと取っておいてくれる。雨の日には、店の奥で温かいお茶を出してくれることもある。""",
    "Korean": """\
우리 동네 도서관은 아침 아홉 시에 문을 연다. 창가 자리는 햇빛이 잘 들어서 늘 먼저 차지하려는 사람들로 붐빈다. 나는 주말마다 그곳에서 소설을 읽고, 점심에는 근처 분식집에서 김밥을 사 먹는다.""",
    "Thai": """\
ตลาดน้ำในตอนเช้ามีเรือเล็กๆ ขายผลไม้และอาหารมากมาย แม่ค้าพายเรือช้าๆ พร้อมกับร้องเรียกลูกค้าด้วยรอยยิ้ม นักท่องเที่ยวชอบถ่ายรูปกล้วยทอดและมะม่วงสีเหลืองสดใส""",
    "Turkish": """\
Sabahları balkonda çay içip denizi izlemeyi çok severim. Martılar gürültüyle uçuşur, vapurlar karşı kıyıya yolcu taşır. Komşumuz her gün taze simit getirir ve mahalledeki bütün haberleri bize anlatır. Öğleden sonra ise sokaklar sessizleşir.""",
    "Vietnamese": """\
Mỗi sáng, bà tôi dậy thật sớm để nấu một nồi phở thơm lừng. Hàng xóm đi ngang qua thường dừng lại chào hỏi và hít hà mùi quế, hồi. Bà bảo rằng nước dùng ngon phải ninh xương ít nhất tám tiếng đồng hồ, không được vội vàng.""",
    "Emoji": """\
Good morning! ☀️ Coffee first ☕, then the run 🏃‍♀️🏃🏽‍♂️. Family: 👨‍👩‍👧‍👦, flags: 🇫🇷 🇯🇵 🇧🇷, hearts: ❤️🧡💛💚💙💜, thumbs: 👍🏻👍🏿. Weather 🌧️ → 🌈, score 3️⃣ : 1️⃣ ✅""",
    "Code": "\n".join([
        'def moving_average(values: list[float], window: int = 3) -> list[float]:',
        '    """Mean of each run of `window` consecutive values."""',
        '    if window < 1:',
        '        raise ValueError(f"window must be ≥ 1, got {window}")',
        '    out = []',
        '    for i in range(len(values) - window + 1):',
        '        out.append(sum(values[i : i + window]) / window)',
        '    return out',
        '',
        'const total = items.filter(x => x.price > 0).reduce((acc, x) => acc + x.price * x.qty, 0);',
        "SELECT name, COUNT(*) AS n FROM orders WHERE created_at >= '2024-01-01' GROUP BY name ORDER BY n DESC;",
    ]),
}
